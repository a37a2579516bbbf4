"""Members and invitations (teams: more than one member is an Enterprise feature, 403
`plan_feature_unavailable` otherwise). Owners and admins invite (a one-time token, emailed and in the answer once),
change roles and remove members; only an owner makes, invites or removes owners; the last owner stays. Accepting
an invitation (`POST /api/v1/invites/accept`) needs no bearer token: the invitation's token is the proof."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from api.idempotency import idempotent
from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, Strict, needs
from billing.invite_mail import send_invite

router = APIRouter(tags=["members"])
MemberId = Annotated[str, Path(pattern=r"^mem_[a-f0-9]{16}$")]
InviteId = Annotated[str, Path(pattern=r"^inv_[a-f0-9]{16}$")]
Role = Literal["owner", "admin", "billing", "developer", "viewer"]


class MemberView(BaseModel):
    id: str
    account_id: str
    email: str
    role: str
    created_at: str
    status: str


class InviteView(BaseModel):
    id: str
    email: str
    role: str
    invited_by: str
    created_at: str
    expires_at: str
    status: str


class NewInvite(Strict):
    email: Annotated[str, Field(min_length=3, max_length=320)]
    role: Role


class CreatedInvite(BaseModel):
    invite: InviteView
    token: str | None            # shown once
    email_sent: bool


class RoleChange(Strict):
    role: Role


class Acceptance(Strict):
    token: Annotated[str, Field(min_length=1, max_length=200)]


class Accepted(BaseModel):
    member: MemberView
    account_id: str
    token: str | None            # the new member's token, shown once


def _by_role(caller: object) -> str:
    role = getattr(caller, "role", "")
    return "owner" if role in ("owner", "operator") else str(role)


@router.get("/accounts/{account_id}/members", response_model=Page[MemberView], summary="Members",
             openapi_extra=needs("members:read"))
def list_members(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                 starting_after: Cursor = None) -> dict[str, object]:
    caller.require("members:read", account_id)
    return paginate(ctx.members.list_members(account_id), limit, starting_after)


@router.post("/accounts/{account_id}/members/{member_id}", response_model=MemberView, summary="Change a role",
             openapi_extra=needs("members:write"))
def change_role(account_id: AccountId, member_id: MemberId, body: RoleChange, ctx: Ctx,
                caller: AuthCaller) -> dict[str, object]:
    caller.require("members:write", account_id)
    return ctx.members.set_role(account_id, member_id, body.role, by_role=_by_role(caller), actor=caller.actor)


@router.delete("/accounts/{account_id}/members/{member_id}", response_model=MemberView, summary="Remove a member",
             openapi_extra=needs("members:write"))
def remove_member(account_id: AccountId, member_id: MemberId, ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    caller.require("members:write", account_id)
    return ctx.members.remove_member(account_id, member_id, by_role=_by_role(caller), actor=caller.actor)


@router.get("/accounts/{account_id}/invites", response_model=Page[InviteView], summary="Invitations",
             openapi_extra=needs("members:read"))
def list_invites(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                 starting_after: Cursor = None) -> dict[str, object]:
    caller.require("members:read", account_id)
    ctx.accounts.get_account(account_id)
    return paginate(ctx.members.list_invites(account_id), limit, starting_after)


@router.post("/accounts/{account_id}/invites", response_model=CreatedInvite, status_code=201,
             summary="Invite a member (emailed)",
             openapi_extra=needs("members:write"))
def invite(account_id: AccountId, body: NewInvite, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    caller.require("members:write", account_id)

    def run() -> dict[str, object]:
        issued = ctx.members.invite(account_id, body.email, body.role, by_role=_by_role(caller), actor=caller.actor)
        account = ctx.accounts.get_account(account_id)
        sent = send_invite(ctx.settings.smtp, issued.invite["email"], str(account["name"]), body.role,
                           issued.token, ctx.settings.public_url, str(account["language"]))
        return {"invite": issued.invite, "token": issued.token, "email_sent": sent}
    return idempotent(request, caller, body, run, status=201)


@router.post("/accounts/{account_id}/invites/{invite_id}/revoke", response_model=InviteView,
             summary="Revoke an invitation",
             openapi_extra=needs("members:write"))
def revoke_invite(account_id: AccountId, invite_id: InviteId, ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    caller.require("members:write", account_id)
    return ctx.members.revoke_invite(account_id, invite_id, actor=caller.actor)


@router.post("/invites/accept", response_model=Accepted, status_code=201, summary="Accept an invitation",
             openapi_extra={"security": []})
def accept(body: Acceptance, ctx: Ctx) -> dict[str, object]:
    issued = ctx.members.accept(body.token)
    return {"member": issued.member, "account_id": issued.member["account_id"], "token": issued.token}
