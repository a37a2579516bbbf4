"""The account's subscription (reads `account:read`, changes `subscription:write`):

- `GET /accounts/{id}/subscription`: the plan, its price, custom quota, overage, a scheduled change;
- `POST /accounts/{id}/subscription/preview {plan}`: this month's invoice with the change made today and without it
  (billing.invoicing: the same lines, tax and total the close will issue, on the overage settled so far);
- `POST /accounts/{id}/subscription {plan}`: change the plan (docs/billing.md): an upgrade or a lateral change
  takes effect at once (its day is billed at the new plan), a downgrade at the start of the next period;
- `POST .../subscription/cancel` (to the free plan at the period's end), `.../cancel-scheduled`;
- `PUT .../subscription/custom-quota {calls|null}` and `POST .../subscription/overage {enabled}`.

Money is integer minor units of the account's `currency`. The domain's refusals keep their code: 400
`unknown_plan`, `payment_method_required`, `custom_quota_not_allowed`, `overage_not_allowed`, `nothing_scheduled`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt
from sqlalchemy.orm import selectinload

from api.auth import Caller
from api.context import ApiContext
from api.errors import ApiError
from api.idempotency import idempotent
from api.params import AccountId, AuthCaller, Ctx, Strict, needs
from api.routes.usage import UNAVAILABLE, PricedLine, TaxAmount, live_counters
from billing.accounts import MAX_CALLS, Change, next_period_start
from billing.db.models import Account
from billing.pricing import AccountUsage, Period, PlanChangeAt
from billing.times import iso
from gateway.catalog import Plan
from gateway.quota.periods import period_of

router = APIRouter(tags=["subscription"])
PlanName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$", description="A plan of `GET /plans`.")]


class SubscriptionDetail(BaseModel):
    """The subscription now. `price_minor`: the plan's monthly price in `currency`; `included_calls`: null on an
    unlimited plan; `custom_quota`: the monthly calls that replace the plan's (null: the plan's);
    `restricted`: unpaid invoices, the free plan's limits apply until paid; `scheduled_plan`/`scheduled_at`: a
    downgrade or cancel taking effect at the start of the next period."""

    account_id: str
    plan: str
    display_name: str
    since: str
    currency: str
    price_minor: int
    included_calls: int | None
    custom_quota: int | None
    overage_enabled: bool
    restricted: bool
    scheduled_plan: str | None
    scheduled_at: str | None
    period: str                      # the current UTC month
    renews_at: str                   # the start of the next period (ISO 8601, UTC)


class SubscriptionChanged(SubscriptionDetail):
    projected: bool                  # false: saved, the gateway applies it once Redis is reachable again


class PlanRequest(Strict):
    plan: PlanName


class CustomQuota(Strict):
    calls: Annotated[StrictInt | None, Field(ge=0, le=MAX_CALLS, description="Monthly calls; null: the plan's.")]


class Overage(Strict):
    enabled: StrictBool


class InvoicePreview(BaseModel):
    lines: list[PricedLine]
    subtotal_minor: int
    tax: TaxAmount
    total_minor: int


class PlanChangePreview(BaseModel):
    """This month's invoice without and with the change. `change`: upgrade (at once), lateral (at once),
    downgrade (at the start of the next period: this month is unchanged) or none. `difference_minor`: with minus
    without. `next_period_price_minor`: the monthly price from the next period on. `payment_method_required`:
    the change would be refused until a payment method is added."""

    account_id: str
    period: str
    currency: str
    from_plan: str
    to_plan: str
    change: str
    effective_at: str | None
    without_change: InvoicePreview
    with_change: InvoicePreview
    difference_minor: int
    next_period_price_minor: int
    payment_method_required: bool


# -- helpers --------------------------------------------------------------------------------------------------
def plan_named(ctx: ApiContext, name: str) -> Plan:
    plan = ctx.accounts.catalog.plans.get(name)
    if plan is None:
        raise ApiError(400, "unknown_plan", f"Unknown plan {name!r}; the catalog has "
                       f"{', '.join(ctx.accounts.catalog.plans)}.", param="plan")
    return plan


def price(plan: Plan, currency: str) -> int:
    return (plan.prices_minor or {}).get(currency, 0)


def subscription_view(ctx: ApiContext, account: dict[str, Any]) -> dict[str, Any]:
    sub = account["subscription"]
    plan = ctx.accounts.catalog.plans[sub["plan"]]
    period = period_of(ctx.clock())
    return {"account_id": account["id"], "plan": plan.name, "display_name": plan.display_name,
            "since": sub["since"], "currency": account["currency"], "price_minor": price(plan, account["currency"]),
            "included_calls": None if plan.unlimited_calls else plan.included_calls,
            "custom_quota": sub["custom_quota"], "overage_enabled": sub["overage_enabled"],
            "restricted": sub["restricted"], "scheduled_plan": sub["scheduled_plan"],
            "scheduled_at": sub["scheduled_at"], "period": period.name, "renews_at": period.reset_iso}


def changed(ctx: ApiContext, change: Change) -> dict[str, Any]:
    return {**subscription_view(ctx, change.account), "projected": change.projected}


def _kind(old: Plan, new: Plan, currency: str) -> str:
    """As AccountService.set_plan decides: a lower price in the account's currency is a downgrade."""
    if old.name == new.name:
        return "none"
    if price(new, currency) < price(old, currency):
        return "downgrade"
    return "upgrade" if price(new, currency) > price(old, currency) else "lateral"


def _preview(ctx: ApiContext, account: Account, period: Period, usage: AccountUsage, changes: list[PlanChangeAt],
             boosts: list[Any]) -> dict[str, Any]:
    invoice = ctx.invoicer.draft(account, period, usage, changes, boosts, "PREVIEW")
    return {"lines": [{"kind": line.kind, "description": line.description, "quantity": line.quantity,
                       "unit_amount_minor": line.unit_amount_minor, "amount_minor": line.amount_minor}
                      for line in invoice.lines],
            "subtotal_minor": invoice.subtotal_minor, "tax": {**invoice.tax, "amount_minor": invoice.tax_minor},
            "total_minor": invoice.total_minor}


def _needs_payment_method(ctx: ApiContext, account_id: str, kind: str, new: Plan, currency: str) -> bool:
    return kind in ("upgrade", "lateral") and ctx.accounts.require_payment_method and price(new, currency) > 0 \
        and not ctx.payments.payment_methods(account_id)


def _write(caller: Caller, account_id: str) -> None:
    caller.require("subscription:write", account_id)


# -- routes ---------------------------------------------------------------------------------------------------
@router.get("/accounts/{account_id}/subscription", response_model=SubscriptionDetail, summary="The subscription",
            openapi_extra=needs("account:read"))
def get_subscription(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """The plan, its monthly price (minor units of `currency`), included calls, custom quota, overage, a
    scheduled change and when the period renews. 404 account_not_found."""
    caller.require("account:read", account_id)
    return subscription_view(ctx, ctx.accounts.get_account(account_id))


@router.post("/accounts/{account_id}/subscription/preview", response_model=PlanChangePreview,
             summary="Preview a plan change", responses=UNAVAILABLE, openapi_extra=needs("subscription:write"))
def preview(account_id: AccountId, body: PlanRequest, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """This month's invoice (lines, tax, total; minor units) without the change and with it made now: an upgrade
    bills today and the rest of the month at the new plan (days/days in month), a downgrade changes nothing
    this month. Overage settled so far (live counters) is in both. Nothing is changed. 400 unknown_plan;
    404 account_not_found; 503 usage_unavailable."""
    _write(caller, account_id)
    view = ctx.accounts.get_account(account_id)
    new = plan_named(ctx, body.plan)
    old = ctx.accounts.catalog.plans[view["subscription"]["plan"]]
    currency = view["currency"]
    kind = _kind(old, new, currency)
    now = ctx.now()
    period = Period(period_of(ctx.clock()).name)
    effective = None if kind == "none" else next_period_start(now) if kind == "downgrade" else now
    usage = AccountUsage(overage_by_plan={old.name: live_counters(ctx, account_id, period.name).overage})
    with ctx.sessions() as session:
        account = session.get(Account, account_id, options=[selectinload(Account.subscription)])
        assert account is not None
        history, sold = ctx.invoicer.period_history(session, period, [account_id])
        changes, boosts = history.get(account_id, []), sold.get(account_id, [])
        without = _preview(ctx, account, period, usage, changes, boosts)
        after = changes if effective is None else [*changes, PlanChangeAt(effective, new.name)]
        with_change = _preview(ctx, account, period, usage, after, boosts)
    return {"account_id": account_id, "period": period.name, "currency": currency, "from_plan": old.name,
            "to_plan": new.name, "change": kind, "effective_at": iso(effective), "without_change": without,
            "with_change": with_change, "difference_minor": with_change["total_minor"] - without["total_minor"],
            "next_period_price_minor": price(new, currency),
            "payment_method_required": _needs_payment_method(ctx, account_id, kind, new, currency)}


@router.post("/accounts/{account_id}/subscription", response_model=SubscriptionChanged, summary="Change the plan",
             openapi_extra=needs("subscription:write"))
def change_plan(account_id: AccountId, body: PlanRequest, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    """Moves to `plan`: an upgrade or lateral change at once, a downgrade scheduled for the start of the next
    period (`scheduled_plan`); the current plan again drops a scheduled change. Takes an Idempotency-Key.
    400 unknown_plan, payment_method_required (a paid plan needs a payment method or bank transfer first);
    404 account_not_found."""
    _write(caller, account_id)
    plan_named(ctx, body.plan)

    def run() -> dict[str, Any]:
        return changed(ctx, ctx.accounts.set_plan(account_id, body.plan, actor=caller.actor))
    return idempotent(request, caller, body, run)


@router.post("/accounts/{account_id}/subscription/cancel", response_model=SubscriptionChanged,
             summary="Cancel at the period's end", openapi_extra=needs("subscription:write"))
def cancel(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """Schedules the move to the free plan for the start of the next period (this month is billed in full);
    on the free plan it only drops a scheduled change. 404 account_not_found."""
    _write(caller, account_id)
    return changed(ctx, ctx.accounts.cancel(account_id, actor=caller.actor))


@router.post("/accounts/{account_id}/subscription/cancel-scheduled", response_model=SubscriptionChanged,
             summary="Drop the scheduled change", openapi_extra=needs("subscription:write"))
def cancel_scheduled(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """Drops a scheduled downgrade or cancel: the plan stays. 400 nothing_scheduled; 404 account_not_found."""
    _write(caller, account_id)
    return changed(ctx, ctx.accounts.cancel_scheduled_change(account_id, actor=caller.actor))


@router.put("/accounts/{account_id}/subscription/custom-quota", response_model=SubscriptionChanged,
            summary="Set the custom quota", openapi_extra=needs("subscription:write"))
def set_custom_quota(account_id: AccountId, body: CustomQuota, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """Sets the account's monthly calls in place of the plan's (`null`: the plan's again), on plans that allow
    it. A member may lower the quota (a cap on spending) but not raise it above the plan's included calls: more
    calls are the operator's to grant. 400 custom_quota_not_allowed (Free; unlimited plans), out_of_range;
    403 custom_quota_above_plan; 404 account_not_found."""
    _write(caller, account_id)
    account = ctx.accounts.get_account(account_id)
    plan = ctx.accounts.catalog.plans[account["subscription"]["plan"]]
    if body.calls is not None and caller.kind != "operator" and plan.custom_quota and not plan.unlimited_calls \
            and body.calls > plan.included_calls:
        raise ApiError(403, "custom_quota_above_plan", f"The {plan.display_name} plan includes "
                       f"{plan.included_calls:,} calls a month; a higher quota is granted by the operator "
                       "(or buy a boost, or enable pay-as-you-go overage).", param="calls")
    return changed(ctx, ctx.accounts.set_custom_quota(account_id, body.calls, actor=caller.actor))


@router.post("/accounts/{account_id}/subscription/overage", response_model=SubscriptionChanged,
             summary="Turn pay-as-you-go overage on or off", openapi_extra=needs("subscription:write"))
def set_overage(account_id: AccountId, body: Overage, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """With overage on, calls past the quota are served and billed at the plan's overage price per call
    (`GET /plans`); off, they are refused (429). 400 overage_not_allowed (plans without pay-as-you-go);
    404 account_not_found."""
    _write(caller, account_id)
    return changed(ctx, ctx.accounts.set_overage(account_id, body.enabled, actor=caller.actor))
