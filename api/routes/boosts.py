"""Boosts: extra calls added to the account's monthly limit until a moment (admit.lua adds every boost not yet
expired). `GET /accounts/{id}/boosts` (`account:read`) lists them; `POST /accounts/{id}/boosts`
(`subscription:write`, takes an Idempotency-Key) adds one.

Who pays: a boost bought by a member is sold at the plan's pay-as-you-go price per call (catalog
`overage_prices_per_call`, in the account's currency) x its calls, billed once as a `boost` line on this month's
invoice (docs/billing.md); it lasts at most until the end of the current period, so its calls count in the one
month it is billed in, and needs a payment method like a paid plan. Plans without pay-as-you-go (Free: upgrade
instead; unlimited plans: nothing to boost) cannot buy boosts. The operator grants boosts of any length, free
(no `price_minor`: no invoice line) or at the price it sets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import AwareDatetime, BaseModel, Field, StrictInt

from api.context import ApiContext
from api.errors import ApiError
from api.idempotency import idempotent
from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, Strict, needs
from billing.accounts import MAX_CALLS, MAX_PRICE_MINOR, next_period_start
from billing.pricing import AccountUsage, overage_lines

router = APIRouter(tags=["boosts"])


class BoostDetail(BaseModel):
    id: str
    calls: int                       # added to the monthly limit while active
    until: str                       # ISO 8601, UTC
    active: bool                     # not expired yet
    price_minor: int | None          # what it was sold for (minor units of `currency`); null: granted free
    currency: str | None


class NewBoost(Strict):
    """`calls` and either `days` (from now) or `until` (an ISO 8601 time with its offset). `price_minor` is the
    operator's to set (members pay the plan's price, see the module description)."""

    calls: Annotated[StrictInt, Field(ge=1, le=MAX_CALLS)]
    days: Annotated[StrictInt | None, Field(ge=1, le=366)] = None
    until: AwareDatetime | None = None
    price_minor: Annotated[StrictInt | None, Field(ge=0, le=MAX_PRICE_MINOR)] = None


def _views(ctx: ApiContext, account: dict[str, Any]) -> list[dict[str, Any]]:
    now = ctx.now()
    return [{**b, "active": datetime.fromisoformat(b["until"]) > now} for b in account["boosts"]]


def _until(ctx: ApiContext, body: NewBoost) -> datetime:
    if (body.days is None) == (body.until is None):
        raise ApiError(400, "bad_boost", "Give either `days` or `until`.", param="days")
    try:
        if body.until is not None:
            return body.until.astimezone(UTC)
        assert body.days is not None
        return ctx.now() + timedelta(days=body.days)
    except (OverflowError, ValueError):
        raise ApiError(400, "bad_boost", "`until` is out of range.", param="until") from None


def _member_price(ctx: ApiContext, account: dict[str, Any], body: NewBoost, until: datetime) -> int:
    """What a member pays for the boost; refuses what members may not buy."""
    if body.price_minor is not None:
        raise ApiError(403, "forbidden", "Only the operator sets a boost's price.", param="price_minor")
    plan = ctx.accounts.catalog.plans[account["subscription"]["plan"]]
    lines = overage_lines(AccountUsage(overage_by_plan={plan.name: body.calls}), ctx.accounts.catalog,
                          account["currency"])
    amount = sum(line.amount_minor for line in lines)
    if plan.overage != "payg_optional" or amount <= 0:
        raise ApiError(403, "plan_feature_unavailable", f"Boosts are sold on plans with pay-as-you-go overage; the "
                       f"{plan.display_name} plan has none" + (" (its calls are unlimited)." if plan.unlimited_calls
                                                                else ": upgrade instead."))
    cap = max(plan.included_calls, 1) * 10
    if body.calls > cap:
        raise ApiError(400, "out_of_range", f"A boost bought by a member adds at most {cap} calls (10 times the "
                       f"plan's included calls); ask the operator for more.", param="calls")
    period_end = next_period_start(ctx.now())
    if until > period_end:
        raise ApiError(400, "bad_boost", f"A boost bought now lasts at most until the end of the period "
                       f"({period_end.isoformat().replace('+00:00', 'Z')}).", param="until" if body.until else "days")
    if ctx.accounts.require_payment_method and not ctx.payments.payment_methods(account["id"]):
        raise ApiError(400, "payment_method_required", "A boost is paid: add a payment method or enable bank "
                       "transfer first.")
    return amount


@router.get("/accounts/{account_id}/boosts", response_model=Page[BoostDetail], summary="Boosts",
            openapi_extra=needs("account:read"))
def list_boosts(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                starting_after: Cursor = None) -> dict[str, object]:
    """The account's boosts, oldest first, active or expired, with their price (minor units) if sold.
    404 account_not_found."""
    caller.require("account:read", account_id)
    return paginate(_views(ctx, ctx.accounts.get_account(account_id)), limit, starting_after)


@router.post("/accounts/{account_id}/boosts", response_model=BoostDetail, status_code=201, summary="Add a boost",
             openapi_extra=needs("subscription:write"))
def add_boost(account_id: AccountId, body: NewBoost, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    """Adds `calls` to the monthly limit until `until` (or for `days`). A member buys it at the plan's
    pay-as-you-go price per call x calls (a `boost` line on this month's invoice), until the period's end at
    most; the operator grants it free or at `price_minor`. Takes an Idempotency-Key. 400 bad_boost (both or
    neither of days/until, a past or too late end), payment_method_required, out_of_range; 403
    plan_feature_unavailable (no pay-as-you-go on the plan), forbidden (`price_minor` from a member);
    404 account_not_found."""
    caller.require("subscription:write", account_id)
    account = ctx.accounts.get_account(account_id)
    until = _until(ctx, body)
    price = body.price_minor if caller.kind == "operator" else _member_price(ctx, account, body, until)

    def run() -> dict[str, Any]:
        boost_id, change = ctx.accounts.add_boost(account_id, body.calls, until.timestamp(), price_minor=price,
                                                  actor=caller.actor)
        return next(b for b in _views(ctx, change.account) if b["id"] == boost_id)
    return idempotent(request, caller, body, run, status=201)
