"""Accounts, API keys, subscriptions and boosts: every admin change, written through.

Each change runs in one database transaction (the account row locked: `FOR UPDATE` on PostgreSQL,
`BEGIN IMMEDIATE` on SQLite), bumps the account's version, records what changed (plan_changes, audit_log) and
commits; the account is then projected to Redis (billing.projection). When Redis cannot be reached the change is
still saved, `projected` is False in the result, and `aihub resync` (or the next start) applies it.
Errors: billing.errors (InvalidInput 400, NotFound 404, Conflict 409).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing.db.models import Account, ApiKey, AuditEntry, Boost, PlanChange, Subscription
from billing.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from billing.projection import Projector, load_account
from billing.times import iso
from gateway.catalog import Catalog
from gateway.keys import ID_RE, hash_api_key, new_api_key, new_id

COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
TAX_ID_RE = re.compile(r"^[A-Za-z0-9 .\-/]{2,64}$")
LANGUAGES = ("en", "zh")
MAX_CALLS = 10**12            # quotas and boosts: far above any plan, exact in admit.lua's doubles
MAX_PRICE_MINOR = 10**12
REGION_RE = re.compile(r"^[A-Z0-9]{0,3}$")
STATUSES = ("active", "suspended")


@dataclass(frozen=True)
class IssuedKey:
    account_id: str
    key_id: str
    api_key: str          # shown once; only its SHA-256 is stored


@dataclass(frozen=True)
class Change:
    account: dict[str, Any]
    projected: bool       # False: saved, Redis not updated yet (resync applies it)


def next_period_start(moment: datetime) -> datetime:
    """00:00 UTC on the 1st of the month after `moment`."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def check_location(country: str, region: str = "") -> tuple[str, str]:
    """(COUNTRY, REGION) upper-cased: an ISO 3166-1 alpha-2 code and up to 3 letters or digits; InvalidInput
    (bad_country) otherwise."""
    country, region = country.upper(), region.upper()
    if not COUNTRY_RE.match(country) or not REGION_RE.match(region):
        raise InvalidInput("Country is an ISO 3166-1 alpha-2 code (e.g. DE); region up to 3 letters or "
                           "digits (e.g. CA).", code="bad_country")
    return country, region


def check_billing_email(email: str) -> str:
    if len(email) > 320 or not EMAIL_RE.match(email) or not email.isprintable():
        raise InvalidInput(f"{email[:80]!r} is not an email address.", code="bad_email")
    return email


def check_tax_id(tax_id: str) -> str:
    if not TAX_ID_RE.match(tax_id):
        raise InvalidInput("A tax id is 2 to 64 letters, digits, spaces, '.', '-' or '/'.", code="bad_tax_id")
    return tax_id


def check_warning_levels(levels: list[int]) -> list[int]:
    """The quota warning levels, sorted without repeats: a subset of [80, 100]; InvalidInput (bad_warning_levels)."""
    if any(level not in (80, 100) for level in levels):
        raise InvalidInput("Quota warnings are sent at 80 and/or 100 percent.", code="bad_warning_levels")
    return sorted(set(levels))


def account_view(account: Account) -> dict[str, Any]:
    sub = account.subscription
    return {"id": account.id, "name": account.name, "billing_email": account.billing_email,
            "country": account.country, "region": account.region, "tax_id": account.tax_id,
            "currency": account.currency, "language": account.language, "status": account.status,
            "created_at": iso(account.created_at), "version": account.version,
            "subscription": {"plan": sub.plan, "since": iso(sub.since), "custom_quota": sub.custom_quota,
                             "overage_enabled": sub.overage_enabled, "restricted": sub.restricted,
                             "scheduled_plan": sub.scheduled_plan,
                             "scheduled_at": iso(sub.scheduled_at)},
            "boosts": [{"id": b.id, "calls": b.calls, "until": iso(b.until), "price_minor": b.price_minor,
                        "currency": b.currency} for b in account.boosts]}


def key_view(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "created_at": iso(key.created_at),
            "last_used_at": iso(key.last_used_at), "revoked_at": iso(key.revoked_at),
            "status": "revoked" if key.revoked_at else "active", "created_by": key.created_by}


class AccountService:
    def __init__(self, sessions: sessionmaker[Session], projector: Projector | None, catalog: Catalog,
                 clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.projector = projector
        self.catalog = catalog
        self.clock = clock
        self.require_payment_method = False   # billing.store sets it from AIHUB_REQUIRE_PAYMENT_METHOD (default on)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- plumbing ------------------------------------------------------------------------------------
    def _locked(self, session: Session, account_id: str) -> Account:
        if not ID_RE.match(account_id):
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        account = session.scalars(select(Account).where(Account.id == account_id).with_for_update()).first()
        if account is None:
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        account.version += 1
        return account

    def _audit(self, session: Session, actor: str, action: str, account_id: str, **details: Any) -> None:
        session.add(AuditEntry(at=self.now(), actor=actor, action=action, account_id=account_id, details=details))

    def _project(self, account_id: str) -> Change:
        with self.sessions() as session:
            account = load_account(session, account_id)
        assert account is not None
        projected = False
        if self.projector is not None:
            try:
                self.projector.project(account)
                projected = True
            except StoreUnavailable:
                projected = False
        return Change(account_view(account), projected)

    def _plan(self, name: str) -> Any:
        plan = self.catalog.plans.get(name)
        if plan is None:
            raise InvalidInput(f"Unknown plan {name!r}; the catalog has {', '.join(self.catalog.plans)}.",
                               code="unknown_plan")
        return plan

    # -- accounts ------------------------------------------------------------------------------------
    def create_account(self, name: str, plan: str, *, country: str = "US", region: str = "",
                       billing_email: str | None = None, tax_id: str | None = None, currency: str | None = None,
                       language: str = "en", account_id: str | None = None, overage: bool = False,
                       bank_transfer: bool = False, actor: str = "admin") -> Change:
        """Creates the account on `plan` (with its first plan change and an audit entry). `bank_transfer`: the
        account pays by bank transfer (its payment method, recorded in the same transaction). A plan priced
        above 0 in the account's currency needs a payment method, as an upgrade does: without bank transfer it
        is refused (InvalidInput payment_method_required) unless AIHUB_REQUIRE_PAYMENT_METHOD=0; to pay by card
        or PayPal, create the account on the free plan, add the method, then `set_plan`. Other errors:
        InvalidInput (unknown_plan, bad_account_id, bad_currency, bad_country, bad_name, bad_email, bad_tax_id,
        bad_language), Conflict (account_exists)."""
        new = self._plan(plan)
        account_id = account_id or new_id()
        if not ID_RE.match(account_id):
            raise InvalidInput("Account ids are 4 to 32 lowercase letters or digits.", code="bad_account_id")
        currency = (currency or self.catalog.currency).upper()
        if currency not in self.catalog.currencies:   # also refuses anything that is not a 3-letter code
            raise InvalidInput(f"Currency {currency!r} is not priced by every plan; use one of "
                               f"{', '.join(self.catalog.currencies)}.", code="bad_currency")
        country, region = check_location(country, region)
        if not name.strip() or len(name) > 200 or not name.isprintable():
            raise InvalidInput("An account name is 1 to 200 printable characters.", code="bad_name")
        if billing_email is not None:
            check_billing_email(billing_email)
        if tax_id is not None:
            check_tax_id(tax_id)
        if language not in LANGUAGES:
            raise InvalidInput(f"The language is one of {', '.join(LANGUAGES)}.", code="bad_language")
        if self.require_payment_method and not bank_transfer and (new.prices_minor or {}).get(currency, 0) > 0:
            raise InvalidInput(f"The {new.display_name} plan is paid: create the account with bank transfer, or on "
                               "the free plan, add a payment method and then change the plan.",
                               code="payment_method_required")
        now = self.now()
        account = Account(id=account_id, name=name.strip(), billing_email=billing_email, country=country,
                          region=region, tax_id=tax_id, currency=currency,
                          language=language, status="active", version=1, created_at=now)
        try:
            with self.sessions.begin() as session:
                session.add(account)
                session.flush()
                session.add(Subscription(account_id=account_id, plan=plan, since=now, custom_quota=None,
                                         overage_enabled=False))
                session.add(PlanChange(account_id=account_id, from_plan=None, to_plan=plan, at=now, actor=actor))
                self._audit(session, actor, "account.create", account_id, plan=plan, name=account.name)
                if bank_transfer:
                    self._add_bank_transfer(session, account_id, actor)
        except IntegrityError:
            raise Conflict(f"Account {account_id!r} exists already.", code="account_exists") from None
        if overage:
            return self.set_overage(account_id, True, actor=actor)
        return self._project(account_id)

    def get_account(self, account_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            account = load_account(session, account_id) if ID_RE.match(account_id) else None
        if account is None:
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        return account_view(account)

    def exists(self, account_id: str) -> bool:
        with self.sessions() as session:
            return session.get(Account, account_id) is not None

    def list_accounts(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            ids = list(session.scalars(select(Account.id).order_by(Account.id)))
        return [self.get_account(a) for a in ids]

    def set_status(self, account_id: str, status: str, *, actor: str = "admin") -> Change:
        if status not in STATUSES:
            raise InvalidInput(f"Status is one of {', '.join(STATUSES)}.", code="bad_status")
        with self.sessions.begin() as session:
            account = self._locked(session, account_id)
            before, account.status = account.status, status
            self._audit(session, actor, "account.status", account_id, before=before, after=status)
        return self._project(account_id)

    def set_language(self, account_id: str, language: str, *, actor: str = "admin") -> Change:
        """The language of the account's invoices and emails (en, zh)."""
        if language not in LANGUAGES:
            raise InvalidInput(f"The language is one of {', '.join(LANGUAGES)}.", code="bad_language")
        with self.sessions.begin() as session:
            account = self._locked(session, account_id)
            before, account.language = account.language, language
            self._audit(session, actor, "account.language", account_id, before=before, after=language)
        return self._project(account_id)

    def set_billing_email(self, account_id: str, email: str | None, *, actor: str = "admin") -> Change:
        """Where invoices and notification emails go; None: no email (notifications by webhook only)."""
        return self._set_details(account_id, "account.billing_email", actor,
                                 billing_email=None if email is None else check_billing_email(email))

    def set_tax_id(self, account_id: str, tax_id: str | None, *, actor: str = "admin") -> Change:
        """The customer's tax id (VAT id), printed on invoices issued from now on; None removes it."""
        return self._set_details(account_id, "account.tax_id", actor,
                                 tax_id=None if tax_id is None else check_tax_id(tax_id))

    def set_location(self, account_id: str, country: str, region: str = "", *, actor: str = "admin") -> Change:
        """The customer's country and region (tax jurisdiction of the invoices issued from now on)."""
        country, region = check_location(country, region)
        return self._set_details(account_id, "account.location", actor, country=country, region=region)

    def _set_details(self, account_id: str, action: str, actor: str, **values: str | None) -> Change:
        with self.sessions.begin() as session:
            account = self._locked(session, account_id)
            before = {name: getattr(account, name) for name in values}
            for name, value in values.items():
                setattr(account, name, value)
            self._audit(session, actor, action, account_id, before=before, after=values)
        return self._project(account_id)

    # -- subscription --------------------------------------------------------------------------------
    def set_plan(self, account_id: str, plan: str, *, now: bool = False, actor: str = "admin") -> Change:
        """An upgrade (a higher price in the account's currency) or a lateral change takes effect at once; a
        downgrade is scheduled for the start of the next period (`now=True` applies it at once). The gateway's
        limits follow when the plan changes. A new change replaces a scheduled one."""
        new = self._plan(plan)
        with self.sessions.begin() as session:
            account = self._locked(session, account_id)
            sub = session.get(Subscription, account_id)
            assert sub is not None
            before = sub.plan
            old = self._plan(before)
            cheaper = (new.prices_minor or {}).get(account.currency, 0) < (old.prices_minor or {}).get(
                account.currency, 0)
            if not cheaper and plan != before and self.require_payment_method \
                    and (new.prices_minor or {}).get(account.currency, 0) > 0 \
                    and not self._has_payment_method(session, account_id):
                raise InvalidInput(f"The {new.display_name} plan is paid: add a payment method or enable bank "
                                   "transfer first.", code="payment_method_required")
            if plan == before:
                sub.scheduled_plan = sub.scheduled_at = None
            elif cheaper and not now:
                sub.scheduled_plan, sub.scheduled_at = plan, next_period_start(self.now())
            else:
                self._change_plan(session, sub, plan, self.now(), actor)
            self._audit(session, actor, "subscription.plan", account.id, before=before, requested=plan,
                        scheduled_for=iso(sub.scheduled_at))
        return self._project(account_id)

    def _add_bank_transfer(self, session: Session, account_id: str, actor: str) -> None:
        """The account's default payment method becomes bank transfer (what PaymentService.enable_bank_transfer
        records), in the caller's transaction."""
        from billing.db.models import PaymentMethod
        from billing.payments.bank_transfer import method_id
        method = PaymentMethod(account_id=account_id, provider="bank_transfer", provider_customer_id=None,
                               provider_method_id=method_id(account_id), brand=None, last4=None, is_default=True,
                               created_at=self.now())
        session.add(method)
        session.flush()
        self._audit(session, actor, "payment_method.add", account_id, provider="bank_transfer", method=method.id,
                    brand=None, last4=None, default=True)

    @staticmethod
    def _has_payment_method(session: Session, account_id: str) -> bool:
        from billing.db.models import PaymentMethod
        return session.scalars(select(PaymentMethod.id).where(PaymentMethod.account_id == account_id)).first() \
            is not None

    def set_restricted(self, account_id: str, restricted: bool, *, actor: str = "dunning") -> Change:
        """Dunning's consequence: the gateway applies the free plan's limits while `restricted` (the subscription
        and its invoices are unchanged); lifting it restores the plan at once."""
        with self.sessions.begin() as session:
            self._locked(session, account_id)
            sub = session.get(Subscription, account_id)
            assert sub is not None
            before, sub.restricted = sub.restricted, restricted
            self._audit(session, actor, "subscription.restricted", account_id, before=before, after=restricted)
        return self._project(account_id)

    def cancel(self, account_id: str, *, actor: str = "admin") -> Change:
        """Cancels the paid subscription at the end of the period: the account moves to the free plan then."""
        return self.set_plan(account_id, self.free_plan(), actor=actor)

    def cancel_scheduled_change(self, account_id: str, *, actor: str = "admin") -> Change:
        with self.sessions.begin() as session:
            self._locked(session, account_id)
            sub = session.get(Subscription, account_id)
            assert sub is not None
            if sub.scheduled_plan is None:
                raise InvalidInput("No plan change is scheduled for this account.", code="nothing_scheduled")
            dropped, sub.scheduled_plan, sub.scheduled_at = sub.scheduled_plan, None, None
            self._audit(session, actor, "subscription.unschedule", account_id, dropped=dropped)
        return self._project(account_id)

    def apply_scheduled_changes(self, *, actor: str = "scheduler") -> list[str]:
        """Applies every scheduled change that is due (at its own time, the start of a period); the accounts."""
        due_at = self.now()
        with self.sessions() as session:
            due = list(session.scalars(select(Subscription.account_id).where(
                Subscription.scheduled_at.is_not(None), Subscription.scheduled_at <= due_at)))
        applied = []
        for account_id in due:
            with self.sessions.begin() as session:
                self._locked(session, account_id)
                sub = session.get(Subscription, account_id)
                assert sub is not None
                if sub.scheduled_plan is None or sub.scheduled_at is None:
                    continue
                at = sub.scheduled_at if sub.scheduled_at.tzinfo else sub.scheduled_at.replace(tzinfo=UTC)
                self._change_plan(session, sub, sub.scheduled_plan, at, actor)
                self._audit(session, actor, "subscription.scheduled_change", account_id, plan=sub.plan)
            self._project(account_id)
            applied.append(account_id)
        return applied

    def free_plan(self) -> str:
        return min(self.catalog.plans.values(), key=lambda p: p.price_minor).name

    def _change_plan(self, session: Session, sub: Subscription, plan: str, at: datetime, actor: str) -> None:
        new = self._plan(plan)
        session.add(PlanChange(account_id=sub.account_id, from_plan=sub.plan, to_plan=plan, at=at, actor=actor))
        sub.plan, sub.since, sub.scheduled_plan, sub.scheduled_at = plan, at, None, None
        if sub.custom_quota is not None and (not new.custom_quota or new.unlimited_calls):
            sub.custom_quota = None          # the new plan has no custom quota
        if new.overage != "payg_optional":
            sub.overage_enabled = False

    def set_custom_quota(self, account_id: str, calls: int | None, *, actor: str = "admin") -> Change:
        with self.sessions.begin() as session:
            self._locked(session, account_id)
            sub = session.get(Subscription, account_id)
            assert sub is not None
            plan = self._plan(sub.plan)
            if calls is not None:
                if plan.unlimited_calls:
                    raise InvalidInput(f"The {plan.display_name} plan has unlimited calls; a custom quota does not "
                                       "apply.", code="custom_quota_not_allowed")
                if not plan.custom_quota:
                    raise InvalidInput(f"The {plan.display_name} plan does not allow a custom quota.",
                                       code="custom_quota_not_allowed")
                if not 0 <= calls <= MAX_CALLS:
                    raise InvalidInput(f"A custom quota is a number of calls from 0 to {MAX_CALLS:,}.",
                                       code="bad_quota")
            before, sub.custom_quota = sub.custom_quota, calls
            self._audit(session, actor, "subscription.custom_quota", account_id, before=before, after=calls)
        return self._project(account_id)

    def set_overage(self, account_id: str, enabled: bool, *, actor: str = "admin") -> Change:
        with self.sessions.begin() as session:
            self._locked(session, account_id)
            sub = session.get(Subscription, account_id)
            assert sub is not None
            plan = self._plan(sub.plan)
            if enabled and plan.overage != "payg_optional":
                raise InvalidInput(f"The {plan.display_name} plan has no pay-as-you-go overage"
                                   f"{' (its calls are unlimited)' if plan.unlimited_calls else ''}.",
                                   code="overage_not_allowed")
            before, sub.overage_enabled = sub.overage_enabled, enabled
            self._audit(session, actor, "subscription.overage", account_id, before=before, after=enabled)
        return self._project(account_id)

    # -- keys ----------------------------------------------------------------------------------------
    def issue_key(self, account_id: str, name: str = "default", *, actor: str = "admin",
                  created_by: str | None = None) -> tuple[IssuedKey, bool]:
        """(the new key, shown once; projected). `created_by`: the member (mem_...) that asked for it, if any."""
        if not name or len(name) > 100 or not name.isprintable():
            raise InvalidInput("A key name is 1 to 100 printable characters.", code="bad_name")
        with self.sessions.begin() as session:
            self._locked(session, account_id)
            key_id = new_id(8)
            api_key = new_api_key(account_id, key_id)
            session.add(ApiKey(id=key_id, account_id=account_id, sha256=hash_api_key(api_key), name=name,
                               created_at=self.now(), created_by=created_by))
            self._audit(session, actor, "key.issue", account_id, key_id=key_id, name=name)
        return IssuedKey(account_id, key_id, api_key), self._project(account_id).projected

    def revoke_key(self, account_id: str, key_id: str, *, actor: str = "admin") -> Change:
        with self.sessions.begin() as session:
            self._locked(session, account_id)
            key = session.get(ApiKey, key_id)
            if key is None or key.account_id != account_id:
                raise NotFound(f"No key {key_id!r} on account {account_id!r}.", code="key_not_found")
            if key.revoked_at is None:
                key.revoked_at = self.now()
            self._audit(session, actor, "key.revoke", account_id, key_id=key_id)
        return self._project(account_id)

    def list_keys(self, account_id: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            if session.get(Account, account_id) is None:
                raise NotFound(f"No account {account_id!r}.", code="account_not_found")
            keys = session.scalars(select(ApiKey).where(ApiKey.account_id == account_id)
                                   .order_by(ApiKey.created_at, ApiKey.id))
            return [key_view(k) for k in keys]

    def record_last_used(self, used: dict[tuple[str, str], float]) -> int:
        """Sets api_keys.last_used_at from {(account, key id): epoch seconds}, only forward; returns rows changed.
        Not an admin change: no version bump, no audit entry, no projection."""
        changed = 0
        with self.sessions.begin() as session:
            for (account_id, key_id), seconds in used.items():
                key = session.get(ApiKey, key_id)
                if key is None or key.account_id != account_id:
                    continue
                moment = datetime.fromtimestamp(seconds, UTC)
                current = key.last_used_at
                if current is not None and current.tzinfo is None:
                    current = current.replace(tzinfo=UTC)
                if current is None or moment > current:
                    key.last_used_at = moment
                    changed += 1
        return changed

    # -- boosts --------------------------------------------------------------------------------------
    def add_boost(self, account_id: str, calls: int, until_s: float, *, price_minor: int | None = None,
                  actor: str = "admin") -> tuple[str, Change]:
        if not 0 < calls <= MAX_CALLS:
            raise InvalidInput(f"A boost adds 1 to {MAX_CALLS:,} calls.", code="bad_boost")
        if until_s <= self.clock():
            raise InvalidInput("A boost must end in the future.", code="bad_boost")
        if price_minor is not None and not 0 <= price_minor <= MAX_PRICE_MINOR:
            raise InvalidInput(f"A boost's price is 0 to {MAX_PRICE_MINOR:,} minor units.", code="bad_boost")
        with self.sessions.begin() as session:
            account = self._locked(session, account_id)
            boost_id = new_id(8)
            session.add(Boost(id=boost_id, account_id=account_id, calls=calls,
                              until=datetime.fromtimestamp(until_s, UTC), price_minor=price_minor,
                              currency=account.currency if price_minor is not None else None, created_at=self.now()))
            self._audit(session, actor, "boost.add", account_id, boost_id=boost_id, calls=calls,
                        until=iso(datetime.fromtimestamp(until_s, UTC)), price_minor=price_minor)
        return boost_id, self._project(account_id)

    def audit_log(self, account_id: str | None = None, limit: int = 100, *,
                  before: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` entries (of the account), newest first; `before`: only entries with a smaller id
        (the next page after the entry with that id)."""
        if not 1 <= limit <= 10_000:
            raise InvalidInput("The limit is 1 to 10,000 entries.", code="bad_limit")
        if account_id is not None and not self.exists(account_id):
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        with self.sessions() as session:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if account_id is not None:
                query = query.where(AuditEntry.account_id == account_id)
            if before is not None:
                query = query.where(AuditEntry.id < before)
            return [{"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action, "account": e.account_id,
                     "details": e.details} for e in session.scalars(query)]

    # -- notification settings (billing.notifications) -----------------------------------------------------
    # Not projected to Redis (the gateway does not use them): no version bump; an audit entry without the secret.
    def _notification_settings(self, session: Session, account_id: str) -> Any:
        from billing.db.models import NotificationSettings
        if not ID_RE.match(account_id) or session.get(Account, account_id) is None:
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        settings = session.get(NotificationSettings, account_id, with_for_update=True)
        if settings is None:
            settings = NotificationSettings(account_id=account_id, webhook_url=None, webhook_secret=None,
                                            warning_levels=[80, 100], updated_at=self.now())
            session.add(settings)
        return settings

    def set_webhook(self, account_id: str, url: str | None, *, actor: str = "admin") -> str | None:
        """Sets the account's webhook URL (http or https) with a new signing secret, returned to be shown once;
        `url=None` turns the webhook off (secret dropped; deliveries not sent yet give up). Returns None then."""
        from billing.notifications import new_webhook_secret
        from billing.webhook_urls import check_url
        if url is not None:
            check_url(url)
        secret = new_webhook_secret() if url is not None else None
        with self.sessions.begin() as session:
            settings = self._notification_settings(session, account_id)
            before = settings.webhook_url
            settings.webhook_url, settings.webhook_secret, settings.updated_at = url, secret, self.now()
            self._audit(session, actor, "notifications.webhook", account_id, before=before, after=url)
        return secret

    def set_warning_levels(self, account_id: str, levels: list[int], *, actor: str = "admin") -> list[int]:
        """Which quota warnings the account gets: a subset of [80, 100]."""
        chosen = check_warning_levels(levels)
        with self.sessions.begin() as session:
            settings = self._notification_settings(session, account_id)
            before, settings.warning_levels, settings.updated_at = settings.warning_levels, chosen, self.now()
            self._audit(session, actor, "notifications.levels", account_id, before=before, after=chosen)
        return chosen

    def notification_settings(self, account_id: str) -> dict[str, Any]:
        """The settings without the secret (it is shown once, when set)."""
        from billing.db.models import NotificationSettings
        with self.sessions() as session:
            if not ID_RE.match(account_id) or session.get(Account, account_id) is None:
                raise NotFound(f"No account {account_id!r}.", code="account_not_found")
            settings = session.get(NotificationSettings, account_id)
            return {"email": session.get(Account, account_id).billing_email,   # type: ignore[union-attr]
                    "webhook_url": settings.webhook_url if settings else None,
                    "warning_levels": list(settings.warning_levels) if settings else [80, 100]}


def connect_error(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"The database is not reachable: {type(exc).__name__}: {exc}")
