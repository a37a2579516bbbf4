"""Teams: the people who manage an account through the management API and the dashboard, with a role each.

Roles (billing.db.models.MEMBER_ROLES): owner, admin, billing, developer, viewer; what each may do is the table in
api/permissions.py. Every account may have one member (its owner, added by an operator or the CLI); more members
(invitations) are an Enterprise feature (the plan's `teams` flag in config/catalog.toml, or Enterprise by name).

Tokens: a member token (`aihub_mt_...`) and an invitation token (`aihub_inv_...`) are random, shown once, and
stored as SHA-256 only. An invitation is used once and expires after INVITE_TTL (7 days). Errors: billing.errors
(InvalidInput 400, NotFound 404, Conflict 409, Forbidden 403).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import EMAIL_RE
from billing.db.models import MEMBER_ROLES, Account, AuditEntry, Invite, Member
from billing.errors import BillingError, Conflict, InvalidInput, NotFound
from billing.times import aware, iso

MEMBER_TOKEN_PREFIX = "aihub_mt_"
INVITE_TOKEN_PREFIX = "aihub_inv_"
INVITE_TTL = timedelta(days=7)
TEAM_PLANS = ("enterprise",)


class Forbidden(BillingError):
    status = 403
    code = "forbidden"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def member_view(member: Member) -> dict[str, Any]:
    return {"id": member.id, "account_id": member.account_id, "email": member.email, "role": member.role,
            "created_at": iso(member.created_at),
            "status": "removed" if member.removed_at else "active"}


def invite_view(invite: Invite, now: datetime) -> dict[str, Any]:
    state = ("accepted" if invite.accepted_at else "revoked" if invite.revoked_at
             else "expired" if aware(invite.expires_at) <= now else "pending")
    return {"id": invite.id, "email": invite.email, "role": invite.role, "invited_by": invite.invited_by,
            "created_at": iso(invite.created_at), "expires_at": iso(invite.expires_at), "status": state}


@dataclass(frozen=True)
class MemberIdentity:
    """Who a member token belongs to."""

    member_id: str
    account_id: str
    role: str
    email: str


@dataclass(frozen=True)
class IssuedMember:
    member: dict[str, Any]
    token: str          # shown once


@dataclass(frozen=True)
class IssuedInvite:
    invite: dict[str, Any]
    token: str          # shown once (and sent by email)


def check_role(role: str) -> str:
    if role not in MEMBER_ROLES:
        raise InvalidInput(f"The role is one of {', '.join(MEMBER_ROLES)}.", code="bad_role")
    return role


def check_email(email: str) -> str:
    if not isinstance(email, str) or len(email) > 320 or not EMAIL_RE.match(email) or not email.isprintable():
        raise InvalidInput(f"{str(email)[:80]!r} is not an email address.", code="bad_email")
    return email.strip().lower()


class MemberService:
    """Members and invitations of accounts, in the system-of-record database (one transaction per change, each
    audited)."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] | None = None,
                 team_plans: tuple[str, ...] = TEAM_PLANS) -> None:
        self.sessions = sessions
        self.clock = clock or time.time
        self.team_plans = team_plans

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _account(self, session: Session, account_id: str) -> Account:
        account = session.get(Account, account_id, with_for_update=True)
        if account is None:
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        return account

    def _audit(self, session: Session, actor: str, action: str, account_id: str, **details: Any) -> None:
        session.add(AuditEntry(at=self.now(), actor=actor, action=action, account_id=account_id, details=details))

    def _active(self, session: Session, account_id: str) -> list[Member]:
        return list(session.scalars(select(Member).where(Member.account_id == account_id,
                                                         Member.removed_at.is_(None)).order_by(Member.created_at,
                                                                                                Member.id)))

    # -- members -----------------------------------------------------------------------------------------
    def add_member(self, account_id: str, email: str, role: str = "owner", *, actor: str = "admin") -> IssuedMember:
        """Adds a member directly (operator or CLI): the way an account gets its first owner. More than one member
        needs a team plan. Returns the member and its token (shown once)."""
        email, role = check_email(email), check_role(role)
        token = MEMBER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.sessions.begin() as session:
            account = self._account(session, account_id)
            active = self._active(session, account_id)
            if active:
                self._require_team(account)
            if any(m.email == email for m in active):
                raise Conflict(f"{email} is a member of {account_id} already.", code="member_exists")
            member = Member(id="mem_" + secrets.token_hex(8), account_id=account_id, email=email, role=role,
                            token_sha256=token_hash(token), created_at=self.now())
            session.add(member)
            self._audit(session, actor, "member.add", account_id, member_id=member.id, role=role)
            session.flush()
            view = member_view(member)
        return IssuedMember(view, token)

    def _require_team(self, account: Account) -> None:
        plan = account.subscription.plan if account.subscription else ""
        if plan not in self.team_plans:
            raise Forbidden(f"Teams (more than one member) are part of the {' or '.join(self.team_plans)} plan; "
                            f"{account.id} is on {plan}.", code="plan_feature_unavailable")

    def authenticate(self, token: str) -> MemberIdentity | None:
        """The member a token belongs to, or None (unknown, removed, or not a member token)."""
        if not token.startswith(MEMBER_TOKEN_PREFIX) or len(token) > 200:
            return None
        with self.sessions() as session:
            member = session.scalar(select(Member).where(Member.token_sha256 == token_hash(token)))
            if member is None or member.removed_at is not None:
                return None
            return MemberIdentity(member.id, member.account_id, member.role, member.email)

    def list_members(self, account_id: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            if session.get(Account, account_id) is None:
                raise NotFound(f"No account {account_id!r}.", code="account_not_found")
            return [member_view(m) for m in self._active(session, account_id)]

    def get_member(self, account_id: str, member_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            member = session.get(Member, member_id)
            if member is None or member.account_id != account_id or member.removed_at is not None:
                raise NotFound(f"No member {member_id!r} on account {account_id!r}.", code="member_not_found")
            return member_view(member)

    def _member(self, session: Session, account_id: str, member_id: str) -> Member:
        member = session.get(Member, member_id, with_for_update=True)
        if member is None or member.account_id != account_id or member.removed_at is not None:
            raise NotFound(f"No member {member_id!r} on account {account_id!r}.", code="member_not_found")
        return member

    def _keep_an_owner(self, session: Session, account_id: str, leaving: Member) -> None:
        owners = [m for m in self._active(session, account_id) if m.role == "owner" and m.id != leaving.id]
        if leaving.role == "owner" and not owners:
            raise Conflict("An account keeps at least one owner: make another member owner first.",
                           code="last_owner")

    def set_role(self, account_id: str, member_id: str, role: str, *, by_role: str = "owner",
                 actor: str = "admin") -> dict[str, Any]:
        """Changes a member's role. Only an owner (or the operator, by_role='owner') may grant or take away owner."""
        check_role(role)
        with self.sessions.begin() as session:
            self._account(session, account_id)
            member = self._member(session, account_id, member_id)
            if "owner" in (role, member.role) and by_role != "owner":
                raise Forbidden("Only an owner may make or unmake owners.", code="forbidden")
            if member.role == "owner" and role != "owner":
                self._keep_an_owner(session, account_id, member)
            before, member.role = member.role, role
            self._audit(session, actor, "member.role", account_id, member_id=member_id, before=before, after=role)
            return member_view(member)

    def remove_member(self, account_id: str, member_id: str, *, by_role: str = "owner",
                      actor: str = "admin") -> dict[str, Any]:
        """Removes a member (their token stops working at once). An owner may be removed only by an owner, and the
        last owner not at all."""
        with self.sessions.begin() as session:
            self._account(session, account_id)
            member = self._member(session, account_id, member_id)
            if member.role == "owner" and by_role != "owner":
                raise Forbidden("Only an owner may remove an owner.", code="forbidden")
            self._keep_an_owner(session, account_id, member)
            member.removed_at = self.now()
            self._audit(session, actor, "member.remove", account_id, member_id=member_id)
            return member_view(member)

    def rotate_token(self, account_id: str, member_id: str, *, actor: str = "admin") -> IssuedMember:
        """A new token for a member; the old one stops working."""
        token = MEMBER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.sessions.begin() as session:
            member = self._member(session, account_id, member_id)
            member.token_sha256 = token_hash(token)
            self._audit(session, actor, "member.rotate_token", account_id, member_id=member_id)
            return IssuedMember(member_view(member), token)

    # -- invitations -------------------------------------------------------------------------------------
    def invite(self, account_id: str, email: str, role: str, *, by_role: str = "owner",
               actor: str = "admin") -> IssuedInvite:
        """A one-time invitation (token shown once; the caller emails it). Team plans only; only an owner may invite
        an owner."""
        email, role = check_email(email), check_role(role)
        if role == "owner" and by_role != "owner":
            raise Forbidden("Only an owner may invite an owner.", code="forbidden")
        token = INVITE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.now()
        with self.sessions.begin() as session:
            account = self._account(session, account_id)
            self._require_team(account)
            if any(m.email == email for m in self._active(session, account_id)):
                raise Conflict(f"{email} is a member of {account_id} already.", code="member_exists")
            invite = Invite(id="inv_" + secrets.token_hex(8), account_id=account_id, email=email, role=role,
                            token_sha256=token_hash(token), invited_by=actor, created_at=now,
                            expires_at=now + INVITE_TTL)
            session.add(invite)
            self._audit(session, actor, "member.invite", account_id, invite_id=invite.id, role=role)
            session.flush()
            return IssuedInvite(invite_view(invite, now), token)

    @staticmethod
    def _inviter_may(invite: Invite, active: list[Member]) -> bool:
        """An invitation made by a member stands only while that member may still invite with that role (removed,
        or no longer an owner or admin: it lapses). Invitations by the operator or the CLI always stand."""
        if not invite.invited_by.startswith("member:"):
            return True
        inviter = next((m for m in active if m.id == invite.invited_by.removeprefix("member:")), None)
        if inviter is None or inviter.role not in ("owner", "admin"):
            return False
        return invite.role != "owner" or inviter.role == "owner"

    def list_invites(self, account_id: str) -> list[dict[str, Any]]:
        now = self.now()
        with self.sessions() as session:
            rows = session.scalars(select(Invite).where(Invite.account_id == account_id)
                                   .order_by(Invite.created_at, Invite.id))
            return [invite_view(i, now) for i in rows]

    def revoke_invite(self, account_id: str, invite_id: str, *, actor: str = "admin") -> dict[str, Any]:
        with self.sessions.begin() as session:
            invite = session.get(Invite, invite_id, with_for_update=True)
            if invite is None or invite.account_id != account_id:
                raise NotFound(f"No invitation {invite_id!r} on account {account_id!r}.", code="invite_not_found")
            if invite.accepted_at is None and invite.revoked_at is None:
                invite.revoked_at = self.now()
                self._audit(session, actor, "member.invite_revoke", account_id, invite_id=invite_id)
            return invite_view(invite, self.now())

    def accept(self, token: str) -> IssuedMember:
        """Turns an invitation into a member (once); the member's token is returned, shown once. An unknown, used,
        revoked or expired invitation is 404 `invite_not_found` (the same answer for each, so tokens cannot be
        probed)."""
        now = self.now()
        member_token = MEMBER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.sessions.begin() as session:
            invite = None
            if token.startswith(INVITE_TOKEN_PREFIX) and len(token) <= 200:
                invite = session.scalar(select(Invite).where(Invite.token_sha256 == token_hash(token))
                                        .with_for_update())
            if (invite is None or invite.accepted_at is not None or invite.revoked_at is not None
                    or aware(invite.expires_at) <= now):
                raise NotFound("This invitation is unknown, used, revoked or expired.", code="invite_not_found")
            active = self._active(session, invite.account_id)
            if any(m.email == invite.email for m in active):
                raise Conflict(f"{invite.email} is a member already.", code="member_exists")
            self._require_team(self._account(session, invite.account_id))
            lapsed = not self._inviter_may(invite, active)
            if lapsed:          # revoked for good (committed), then refused like any other dead invitation
                invite.revoked_at = now
                self._audit(session, "system", "member.invite_revoke", invite.account_id, invite_id=invite.id,
                            reason="the inviting member was removed or lost the right")
            else:
                issued = self._join(session, invite, member_token, now)
        if lapsed:
            raise NotFound("This invitation is unknown, used, revoked or expired.", code="invite_not_found")
        return issued

    def _join(self, session: Session, invite: Invite, member_token: str, now: datetime) -> IssuedMember:
        invite.accepted_at = now
        member = Member(id="mem_" + secrets.token_hex(8), account_id=invite.account_id, email=invite.email,
                        role=invite.role, token_sha256=token_hash(member_token), created_at=now)
        session.add(member)
        self._audit(session, invite.email, "member.accept", invite.account_id, invite_id=invite.id,
                    member_id=member.id, role=invite.role)
        session.flush()
        return IssuedMember(member_view(member), member_token)
