"""Usage of an account (`usage:read`; an API key reads its own account's):

- `GET /accounts/{id}/usage/current`: the current UTC month in real time, from the gateway's live Redis counters
  (`{s:NN}:a:<acct>:q:<YYYY-MM>`, docs/redis-keys.md) and the limit as admit.lua computes it (plan or custom
  quota plus active boosts);
- `GET /accounts/{id}/usage?period=YYYY-MM&group_by=day,model,key`: the settled history of a month from
  ClickHouse (`usage_rows FINAL`; the drain lags the counters by a few seconds);
- `GET /accounts/{id}/usage.csv`: the same lines as CSV;
- `GET /accounts/{id}/usage/forecast`: the month-end forecast (docs/billing.md, "Month-end forecast").

Money: invoice amounts are integer minor units of the account's `currency`; list costs (what the calls cost at
the catalog's model prices) are exact decimal strings in the catalog currency (`list_cost_currency`), with the
integer nano-units beside them. Never floats. 503 `usage_unavailable` / `usage_history_unavailable` when Redis or
ClickHouse cannot be reached.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from api.context import ApiContext
from api.errors import ApiError
from api.params import AccountId, AuthCaller, Ctx, needs
from billing.pricing import AccountUsage, Period, overage_lines
from billing_worker.counters import account_limit
from billing_worker.errors import StreamError
from billing_worker.export import write_csv
from billing_worker.forecast import forecast
from billing_worker.money import format_money
from billing_worker.quota_counters import CurrentUsage, current_usage
from billing_worker.usage_queries import GROUPINGS, UsageLine, usage_lines
from gateway.catalog import Plan
from gateway.keys import AccountKeys
from gateway.quota.periods import period_of

router = APIRouter(tags=["usage"])
log = logging.getLogger("aihub.api")

PERIOD_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
PeriodQuery = Annotated[str | None, Query(pattern=PERIOD_PATTERN, description="A UTC month `YYYY-MM` (default: "
                                          "the current one); not in the future.")]
GroupBy = Annotated[str, Query(pattern=r"^((day|model|key)(,(day|model|key)){0,2})?$", max_length=20,
                               description="Comma-separated groupings: any of `day`, `model`, `key` (empty: one "
                                           "line for the whole month).")]
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Redis (live counters) or ClickHouse (usage history) cannot be reached", "content": _ERROR}}
PERCENT_PLACES = Decimal("0.01")


# -- shared with plans.py and subscription.py ---------------------------------------------------------------
def chosen_period(ctx: ApiContext, period: str | None) -> Period:
    """`period` (validated `YYYY-MM`) or the current UTC month; a month after the current one is 400
    `bad_period`."""
    current = period_of(ctx.clock()).name
    name = period or current
    if name > current:
        raise ApiError(400, "bad_period", f"{name} has not started yet (the current period is {current}).",
                       param="period")
    return Period(name)


def live_counters(ctx: ApiContext, account_id: str, period: str) -> CurrentUsage:
    """The gateway's counters of the account in `period`; 503 `usage_unavailable` when Redis does not answer."""
    try:
        return current_usage(ctx.store.redis, account_id, period, ctx.store.projector.shards)
    except StreamError:
        raise _redis_down() from None


def _redis_down() -> ApiError:
    log.exception("live usage (Redis) failed")
    return ApiError(503, "usage_unavailable", "Live usage is not available right now; the error was logged. "
                    "Retry later.")


def applied_plan(ctx: ApiContext, account: dict[str, Any]) -> Plan:
    """The plan the gateway applies: the subscription's, or the free plan's limits while dunning restricts it."""
    sub = account["subscription"]
    name = ctx.store.projector.restricted_plan if sub["restricted"] else sub["plan"]
    return ctx.accounts.catalog.plans[name]


def percent(part: int, whole: int | None) -> str | None:
    """part / whole x 100 as a decimal string with 2 places (half-up); None when there is nothing to divide by."""
    if not whole:
        return None
    return str((Decimal(part) * 100 / Decimal(whole)).quantize(PERCENT_PLACES, rounding=ROUND_HALF_UP))


# -- models ---------------------------------------------------------------------------------------------------
class ModelCallsView(BaseModel):
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int


class CurrentUsageView(BaseModel):
    """The current month so far, live. `used` counts confirmed billable calls, `reserved` calls in flight
    (admitted, not settled yet); the gateway refuses a request when used + reserved + its calls would pass
    `limit` (unless pay-as-you-go overage is on). `limit` is null on an unlimited plan."""

    account_id: str
    period: str                      # YYYY-MM (UTC)
    resets_at: str                   # when the next period starts (ISO 8601, UTC)
    plan: str                        # the plan whose limits apply (the free plan while restricted)
    used: int
    reserved: int
    limit: int | None                # plan calls or custom quota, plus active boosts; null: unlimited
    remaining: int | None            # max(0, limit - used - reserved); null: unlimited
    percent: str | None              # used / limit x 100, decimal string, 2 places; null: unlimited or limit 0
    overage_enabled: bool
    overage_calls: int               # calls past the limit, billed as pay-as-you-go overage
    overage_minor: int               # their price so far at the plan's overage price, minor units of `currency`
    currency: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    list_cost: str                   # exact decimal, catalog currency
    list_cost_nanos: int
    list_cost_currency: str
    by_model: list[ModelCallsView]


class UsageTotals(BaseModel):
    requests: int
    calls: int
    overage_calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    list_cost: str                   # exact decimal, catalog currency
    list_cost_nanos: int


class UsageLineView(UsageTotals):
    """One group: `day`, `model`, `key_id` are set when grouped by them, else null."""

    day: str | None                  # YYYY-MM-DD (UTC)
    model: str | None
    key_id: str | None


class UsageHistory(BaseModel):
    """A month's settled usage, in the order of the groupings (day, model, key)."""

    account_id: str
    period: str
    group_by: list[str]
    list_cost_currency: str
    data: list[UsageLineView]
    totals: UsageTotals


class PricedLine(BaseModel):
    """An invoice line as billing/pricing.py makes it (amounts in minor units)."""

    kind: str                        # subscription | overage | boost
    description: str
    quantity: str
    unit_amount_minor: int
    amount_minor: int


class TaxAmount(BaseModel):
    rate: str                        # percent, decimal string ("19" = 19 %)
    jurisdiction: str
    reverse_charge: bool
    note: str | None
    amount_minor: int


class ForecastView(BaseModel):
    """The month-end forecast of the current period (billing_worker/forecast.py): calls so far (settled rows in
    ClickHouse started before now), the daily run rate, the projected calls (capped at the allowance on a plan
    that stops at its quota; `demand_calls` uncapped) and the expected invoice (lines, tax, total) in minor units
    of `currency`. List costs are minor units of `list_cost_currency`."""

    account_id: str
    period: str
    now: str
    currency: str
    plan: str
    overage_enabled: bool
    elapsed_days: str                # decimal string, 2 places
    days_in_period: int
    calls_so_far: int
    daily_run_rate: str              # calls per day, decimal string, 2 places
    demand_calls: int
    projected_calls: int
    allowance: int | None            # quota + boosts; null: unlimited
    projected_overage_calls: int
    list_cost_currency: str
    cost_so_far_minor: int
    projected_cost_minor: int
    lines: list[PricedLine]
    subtotal_minor: int
    tax: TaxAmount
    total_minor: int


class CsvResponse(Response):
    media_type = "text/csv"


# -- helpers --------------------------------------------------------------------------------------------------
def _limit(ctx: ApiContext, account: dict[str, Any], plan: Plan) -> int | None:
    """admit.lua's limit (billing_worker.counters.account_limit on the projection); the system of record's
    figures when the account is not projected yet."""
    if plan.unlimited_calls:
        return None
    now_s = ctx.clock()
    try:
        limit = account_limit(ctx.store.redis, AccountKeys(account["id"], ctx.store.projector.shards),
                              ctx.accounts.catalog, now_s)
    except (redis.RedisError, OSError):
        raise _redis_down() from None
    if limit >= 0:
        return limit
    sub = account["subscription"]
    base = sub["custom_quota"] if plan.custom_quota and sub["custom_quota"] is not None else plan.included_calls
    now = datetime.fromtimestamp(now_s, UTC)
    return int(base) + sum(int(b["calls"]) for b in account["boosts"] if datetime.fromisoformat(b["until"]) > now)


def _groups(group_by: str) -> list[str]:
    chosen = {g for g in group_by.split(",") if g}
    return [g for g in GROUPINGS if g in chosen]


def _totals(lines: list[UsageLine]) -> dict[str, Any]:
    nanos = sum(line.cost_nanos for line in lines)
    return {"requests": sum(line.requests for line in lines), "calls": sum(line.calls for line in lines),
            "overage_calls": sum(line.overage_calls for line in lines), "prompt_tokens": sum(line.pt for line in lines),
            "completion_tokens": sum(line.ct for line in lines), "cached_tokens": sum(line.cached for line in lines),
            "reasoning_tokens": sum(line.reasoning for line in lines), "list_cost": format_money(nanos),
            "list_cost_nanos": nanos}


def _line(line: UsageLine) -> dict[str, Any]:
    return {**_totals([line]), "day": line.day.isoformat() if line.day else None, "model": line.model,
            "key_id": line.key_id}


def _history(ctx: ApiContext, account_id: str, period: str | None, group_by: str) -> tuple[Period, list[str],
                                                                                          list[UsageLine]]:
    ctx.accounts.get_account(account_id)            # 404 account_not_found (the operator may ask for any id)
    chosen = chosen_period(ctx, period)
    groups = _groups(group_by)
    with ctx.clickhouse() as ch:
        return chosen, groups, usage_lines(ch, chosen.name, acct=account_id, by=groups)


# -- routes ---------------------------------------------------------------------------------------------------
@router.get("/accounts/{account_id}/usage/current", response_model=CurrentUsageView, summary="Usage this month, live",
            responses=UNAVAILABLE, openapi_extra=needs("usage:read"))
def current(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """The current UTC month from the gateway's live counters: `used`, `reserved`, `limit` (null: unlimited),
    `remaining`, `percent` (decimal string), `overage_calls` and their price so far (`overage_minor`, minor units
    of `currency`, at the current plan's overage price), tokens, list cost (exact decimal string in
    `list_cost_currency`), calls per model, and `resets_at`. 404 account_not_found; 503 usage_unavailable."""
    caller.require("usage:read", account_id)
    account = ctx.accounts.get_account(account_id)
    period = period_of(ctx.clock())
    counters = live_counters(ctx, account_id, period.name)
    plan = applied_plan(ctx, account)
    limit = _limit(ctx, account, plan)
    overage = overage_lines(AccountUsage(overage_by_plan={plan.name: counters.overage}), ctx.accounts.catalog,
                            account["currency"])
    return {
        "account_id": account_id, "period": period.name, "resets_at": period.reset_iso, "plan": plan.name,
        "used": counters.used, "reserved": counters.reserved, "limit": limit,
        "remaining": None if limit is None else max(0, limit - counters.used - counters.reserved),
        "percent": percent(counters.used, limit), "overage_enabled": account["subscription"]["overage_enabled"],
        "overage_calls": counters.overage, "overage_minor": sum(line.amount_minor for line in overage),
        "currency": account["currency"], "prompt_tokens": counters.pt, "completion_tokens": counters.ct,
        "cached_tokens": counters.cached, "reasoning_tokens": counters.reasoning,
        "list_cost": format_money(counters.cost_nanos), "list_cost_nanos": counters.cost_nanos,
        "list_cost_currency": ctx.accounts.catalog.currency,
        "by_model": [{"model": name, "calls": m.calls, "prompt_tokens": m.pt, "completion_tokens": m.ct}
                     for name, m in counters.models.items()]}


@router.get("/accounts/{account_id}/usage", response_model=UsageHistory, summary="Usage history of a month",
            responses=UNAVAILABLE, openapi_extra=needs("usage:read"))
def history(account_id: AccountId, ctx: Ctx, caller: AuthCaller, period: PeriodQuery = None,
            group_by: GroupBy = "day") -> dict[str, Any]:
    """The settled usage of `period` (default: the current month) from ClickHouse, one line per group of
    `group_by` (default `day`; e.g. `day,model`), with the month's totals. Each line: requests, billable calls,
    overage calls, tokens, list cost (exact decimal string in `list_cost_currency`, plus nano-units).
    400 invalid_value (period, group_by), bad_period (a future month); 404 account_not_found;
    503 usage_history_unavailable."""
    caller.require("usage:read", account_id)
    chosen, groups, lines = _history(ctx, account_id, period, group_by)
    return {"account_id": account_id, "period": chosen.name, "group_by": groups,
            "list_cost_currency": ctx.accounts.catalog.currency, "data": [_line(line) for line in lines],
            "totals": _totals(lines)}


@router.get("/accounts/{account_id}/usage.csv", response_class=CsvResponse, summary="Usage history as CSV",
            responses={200: {"description": "One row per line (billing_worker/export.py columns; cost as an exact "
                                            "decimal in the catalog currency)",
                             "content": {"text/csv": {"schema": {"type": "string"}}}}, **UNAVAILABLE},
            openapi_extra=needs("usage:read"))
def history_csv(account_id: AccountId, ctx: Ctx, caller: AuthCaller, period: PeriodQuery = None,
                group_by: GroupBy = "day") -> Response:
    """The lines of `GET /accounts/{id}/usage` (same `period` and `group_by`) as `text/csv`, an attachment named
    `usage-<account>-<period>.csv`, with the header `acct,day,model,key_id,requests,calls,overage_calls,pt,ct,cached,
    reasoning,cost_nanos,cost`. Errors as the JSON route."""
    caller.require("usage:read", account_id)
    chosen, _, lines = _history(ctx, account_id, period, group_by)
    out = io.StringIO()
    write_csv(lines, out)
    return CsvResponse(out.getvalue(), headers={
        "Content-Disposition": f'attachment; filename="usage-{account_id}-{chosen.name}.csv"'})


@router.get("/accounts/{account_id}/usage/forecast", response_model=ForecastView, summary="Month-end forecast",
            responses=UNAVAILABLE, openapi_extra=needs("usage:read"))
def month_end_forecast(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """The forecast of the current month (docs/billing.md, "Month-end forecast"): calls so far, run rate,
    projected calls and list cost, and the expected invoice (subscription, overage and boost lines, tax, total;
    minor units of `currency`). Usage not yet drained from Redis is not counted. 404 account_not_found;
    503 usage_history_unavailable."""
    caller.require("usage:read", account_id)
    ctx.accounts.get_account(account_id)
    with ctx.clickhouse() as ch:
        result = forecast(ctx.invoicer, ch, ctx.now(), account_id)
    item = result.to_dict()["accounts"][0]
    item["account_id"] = item.pop("account")
    return {**item, "now": result.now, "list_cost_currency": result.cost_currency}
