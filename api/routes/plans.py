"""Plans: `GET /plans`, the catalog (config/catalog.toml) as customers see it; and
`GET /accounts/{id}/plans/compare`, what the account's calls of a month would cost on each plan, priced by
billing/pricing.py as the invoice prices them (the whole month's subscription plus pay-as-you-go overage; before
tax). Money is integer minor units of a currency: `prices_minor` maps each currency to an amount."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.context import ApiContext
from api.params import AccountId, AuthCaller, Ctx, needs
from api.routes.usage import UNAVAILABLE, PeriodQuery, PricedLine, chosen_period, live_counters
from billing.pricing import AccountUsage, Line, Period, overage_lines, subscription_lines
from billing_worker.usage_queries import account_totals
from gateway.catalog import Catalog, Plan
from gateway.quota.periods import period_of

router = APIRouter(tags=["plans"])


class PlanFeatures(BaseModel):
    custom_quota: bool               # the monthly quota may be set per account
    pay_as_you_go: bool              # calls past the quota may be billed as overage (when the account enables it)
    teams: bool                      # more than one member
    support: str


class PlanView(BaseModel):
    name: str
    display_name: str
    prices_minor: dict[str, int]     # monthly price by currency (ISO 4217), minor units
    included_calls: int | None       # per month; null: unlimited
    unlimited_calls: bool
    overage: str                     # hard (refused past the quota) | payg_optional | unlimited
    overage_prices_minor: dict[str, int]   # per call past the quota by currency, minor units
    rate_per_minute: int             # requests per minute (token bucket refill)
    burst: int                       # requests at once (token bucket size)
    max_calls_per_request: int
    max_output_tokens: int | None    # cap on output tokens per request; null: none
    model_tiers: list[str]
    models: list[str]                # the catalog's models of those tiers
    features: PlanFeatures


class PlanCatalog(BaseModel):
    object: str = "list"
    version: str                     # the catalog's version
    currencies: list[str]            # an account's currency is one of these (fixed at creation)
    data: list[PlanView]


class PlanCost(BaseModel):
    """One plan for the month's calls: the month's subscription line and, past its included calls, the overage
    line (pay-as-you-go on) or, on a plan that stops at its quota, the calls it would have refused."""

    plan: str
    display_name: str
    current: bool                    # the account's plan now
    included_calls: int | None       # the catalog's; null: unlimited
    subscription_minor: int
    overage_calls: int
    overage_minor: int
    refused_calls: int
    fits: bool                       # every call would have been served
    total_minor: int                 # subscription + overage, before tax
    lines: list[PricedLine]


class PlanComparison(BaseModel):
    """What `calls` (the account's billable calls of `period`; live counters for the current month, the settled
    history for past months) would cost on each plan, in minor units of `currency`, before tax. Custom quotas
    and boosts are not counted. `cheapest`: the cheapest plan that serves every call."""

    account_id: str
    period: str
    currency: str
    calls: int
    source: str                      # live (Redis counters) | history (ClickHouse)
    current_plan: str
    cheapest: str | None
    plans: list[PlanCost]


def _models(catalog: Catalog, plan: Plan) -> list[str]:
    return sorted(name for name, model in catalog.models.items() if model.tier in plan.model_tiers)


def plan_view(ctx: ApiContext, plan: Plan) -> dict[str, Any]:
    catalog = ctx.accounts.catalog
    return {"name": plan.name, "display_name": plan.display_name, "prices_minor": dict(plan.prices_minor or {}),
            "included_calls": None if plan.unlimited_calls else plan.included_calls,
            "unlimited_calls": plan.unlimited_calls, "overage": plan.overage,
            "overage_prices_minor": dict(plan.overage_prices_minor or {}) if plan.overage == "payg_optional" else {},
            "rate_per_minute": plan.rate_per_minute, "burst": plan.burst,
            "max_calls_per_request": plan.max_calls_per_request, "max_output_tokens": plan.max_output_tokens or None,
            "model_tiers": list(plan.model_tiers), "models": _models(catalog, plan),
            "features": {"custom_quota": plan.custom_quota and not plan.unlimited_calls,
                         "pay_as_you_go": plan.overage == "payg_optional",
                         "teams": plan.name in ctx.members.team_plans, "support": plan.support}}


def _line(line: Line) -> dict[str, Any]:
    return {"kind": line.kind, "description": line.description, "quantity": line.quantity,
            "unit_amount_minor": line.unit_amount_minor, "amount_minor": line.amount_minor}


def plan_cost(catalog: Catalog, plan: Plan, period: Period, calls: int, currency: str) -> dict[str, Any]:
    """The month on `plan` with `calls` billable calls, priced by billing.pricing."""
    beyond = 0 if plan.unlimited_calls else max(0, calls - plan.included_calls)
    payg = plan.overage == "payg_optional"
    lines = [*subscription_lines(period, {plan.name: period.days}, catalog, currency),
             *overage_lines(AccountUsage(overage_by_plan={plan.name: beyond if payg else 0}), catalog, currency)]
    subscription = sum(line.amount_minor for line in lines if line.kind == "subscription")
    overage = sum(line.amount_minor for line in lines if line.kind == "overage")
    refused = 0 if payg else beyond
    return {"plan": plan.name, "display_name": plan.display_name,
            "included_calls": None if plan.unlimited_calls else plan.included_calls,
            "subscription_minor": subscription, "overage_calls": beyond if payg else 0, "overage_minor": overage,
            "refused_calls": refused, "fits": refused == 0, "total_minor": subscription + overage,
            "lines": [_line(line) for line in lines]}


def _calls(ctx: ApiContext, account_id: str, period: Period) -> tuple[int, str]:
    if period.name == period_of(ctx.clock()).name:
        return live_counters(ctx, account_id, period.name).used, "live"
    with ctx.clickhouse() as ch:
        return sum(line.calls for line in account_totals(ch, period.name, account_id)), "history"


@router.get("/plans", response_model=PlanCatalog, summary="The plan catalog", openapi_extra=needs("account:read"))
def list_plans(ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """Every plan: monthly price per currency and per overage call (minor units), included calls (null:
    unlimited), rate limits, models and features. Any member or the operator."""
    caller.require("account:read")
    catalog = ctx.accounts.catalog
    return {"object": "list", "version": catalog.version, "currencies": list(catalog.currencies),
            "data": [plan_view(ctx, plan) for plan in catalog.plans.values()]}


@router.get("/accounts/{account_id}/plans/compare", response_model=PlanComparison,
            summary="What the month would cost on each plan", responses=UNAVAILABLE,
            openapi_extra=needs("account:read"))
def compare(account_id: AccountId, ctx: Ctx, caller: AuthCaller, period: PeriodQuery = None) -> dict[str, Any]:
    """For the account's billable calls of `period` (default: the current month, so far), each plan's cost in
    the account's currency: the whole month's subscription plus pay-as-you-go overage past the plan's included
    calls (or the calls a hard-stop plan would refuse), before tax, as billing/pricing.py prices them.
    400 invalid_value, bad_period; 404 account_not_found; 503 usage_unavailable, usage_history_unavailable."""
    caller.require("account:read", account_id)
    account = ctx.accounts.get_account(account_id)
    chosen = chosen_period(ctx, period)
    calls, source = _calls(ctx, account_id, chosen)
    catalog = ctx.accounts.catalog
    current_plan = account["subscription"]["plan"]
    costs = [{**plan_cost(catalog, plan, chosen, calls, account["currency"]), "current": plan.name == current_plan}
             for plan in catalog.plans.values()]
    fitting = [c for c in costs if c["fits"]]
    cheapest = min(fitting, key=lambda c: c["total_minor"])["plan"] if fitting else None
    return {"account_id": account_id, "period": chosen.name, "currency": account["currency"], "calls": calls,
            "source": source, "current_plan": current_plan, "cheapest": cheapest, "plans": costs}
