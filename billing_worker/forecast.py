"""Month-end forecast of the current period, per account and for the whole business (docs/billing.md,
"Reports"): usage so far from ClickHouse (`usage_rows FINAL`), plans, boosts and tax from the database.

`forecast(invoicer, ch, now)` (`now` is a parameter: tests pin it) gives, for each account that exists at `now`:
- calls and list cost so far: the period's settled rows started before `now` (rows still in the Redis streams,
  not drained yet, are not counted);
- the elapsed time: from the later of the period's start and the account's creation to `now`, in days (UTC,
  fractional); the daily run rate = calls so far / elapsed days;
- projected calls at month end = calls so far + run rate x the days left until the period's end, rounded half-up
  (so calls so far x active days in the month / elapsed days). On a plan that stops at its quota (hard overage,
  or pay-as-you-go not enabled) the projection is capped at the allowance (quota + boosts overlapping the
  period); `demand_calls` keeps the uncapped figure. The projected list cost scales the cost so far the same way;
- the expected invoice: the subscription line(s) of the month as billing.pricing prices them with the current
  plan history (the current plan to the month's end; a downgrade scheduled for the period end does not change
  this month), the overage line(s): overage settled so far by plan plus the projected calls beyond the allowance
  on the current plan (only when pay-as-you-go overage is on), the boosts sold in the period, and the tax line
  (billing.tax, the rate on the period's last day). The same lines the close will issue, on projected usage.
The business forecast sums those per currency (list cost is in the catalog currency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from billing.db.models import Account, Boost
from billing.errors import NotFound
from billing.invoicing import Invoicer
from billing.pricing import AccountUsage, Line, Period, nanos_to_minor
from billing.times import aware
from billing_worker.clickhouse import ClickHouse
from billing_worker.usage_queries import FINAL_SETTINGS

DAY = Decimal(86_400)
RATE_PLACES = Decimal("0.01")

SQL = f"""
SELECT acct, plan, sum(calls), sum(overage), sum(cost_nanos)
FROM usage_rows FINAL
WHERE period = {{period:String}} AND ts_start_ms < {{now_ms:UInt64}}{{acct_filter}}
GROUP BY acct, plan {FINAL_SETTINGS}
"""


def _half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def current_period(now: datetime) -> Period:
    now = aware(now).astimezone(UTC)
    return Period(f"{now.year:04d}-{now.month:02d}")


@dataclass(frozen=True)
class SoFar:
    calls: int = 0
    cost_nanos: int = 0
    overage_by_plan: dict[str, int] = field(default_factory=dict)


def usage_so_far(ch: ClickHouse, period: Period, now: datetime, acct: str | None = None) -> dict[str, SoFar]:
    """Calls, list cost and settled overage by plan per account: the period's rows started before `now`."""
    params: dict[str, Any] = {"period": period.name, "now_ms": int(aware(now).timestamp() * 1000)}
    sql = SQL.replace("{acct_filter}", " AND acct = {acct:String}" if acct is not None else "")
    if acct is not None:
        params["acct"] = acct
    raw: dict[str, tuple[int, int, dict[str, int]]] = {}
    for account, plan, calls, overage, cost in ch.query(sql, params):
        total_calls, total_cost, by_plan = raw.get(str(account), (0, 0, {}))
        if int(overage):
            by_plan[str(plan)] = by_plan.get(str(plan), 0) + int(overage)
        raw[str(account)] = (total_calls + int(calls), total_cost + int(cost), by_plan)
    return {a: SoFar(calls, cost, by_plan) for a, (calls, cost, by_plan) in raw.items()}


@dataclass(frozen=True)
class ForecastLine:
    kind: str
    description: str
    quantity: str
    unit_amount_minor: int
    amount_minor: int


@dataclass(frozen=True)
class AccountForecast:
    account: str
    currency: str
    plan: str
    overage_enabled: bool
    period: str
    elapsed_days: str               # decimal string, 2 places
    days_in_period: int
    calls_so_far: int
    daily_run_rate: str             # calls per day, decimal string with 2 places
    demand_calls: int               # run-rate projection, uncapped
    projected_calls: int            # capped at the allowance when the plan stops at its quota
    allowance: int | None           # quota + boosts; None: unlimited
    projected_overage_calls: int
    cost_so_far_minor: int          # list cost, catalog currency
    projected_cost_minor: int
    lines: list[ForecastLine]
    subtotal_minor: int
    tax: dict[str, Any]             # rate, jurisdiction, reverse_charge, note, amount_minor
    total_minor: int


@dataclass(frozen=True)
class BusinessForecast:
    currency: str
    accounts: int
    calls_so_far: int
    projected_calls: int
    subscription_minor: int
    overage_minor: int
    boost_minor: int
    subtotal_minor: int
    tax_minor: int
    total_minor: int


@dataclass(frozen=True)
class Forecast:
    period: str
    now: str
    cost_currency: str              # list costs are in the catalog currency
    accounts: list[AccountForecast]
    business: dict[str, BusinessForecast]
    projected_cost_minor: int       # all accounts, catalog currency

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _boost_calls(boosts: Sequence[Boost], period: Period) -> int:
    return sum(b.calls for b in boosts
               if aware(b.created_at) < period.end and aware(b.until) > period.start)


def forecast(invoicer: Invoicer, ch: ClickHouse, now: datetime, account: str | None = None) -> Forecast:
    """The month-end forecast of the period containing `now` (UTC); `account` restricts it to one account
    (NotFound if it does not exist)."""
    now = aware(now).astimezone(UTC)
    period = current_period(now)
    catalog = invoicer.catalog
    with invoicer.sessions() as session:
        query = (select(Account).where(Account.created_at <= now).order_by(Account.id)
                 .options(selectinload(Account.subscription), selectinload(Account.boosts)))
        if account is not None:
            query = query.where(Account.id == account)
        accounts = list(session.scalars(query))
        if account is not None and not accounts:
            raise NotFound(f"No account {account!r}.", code="account_not_found")
        ids = [a.id for a in accounts]
        changes, sold = invoicer.period_history(session, period, ids if account is not None else None)
        sofar = usage_so_far(ch, period, now, account)
        results: list[AccountForecast] = []
        for acct in accounts:
            results.append(_account_forecast(invoicer, acct, period, now, sofar.get(acct.id, SoFar()),
                                             changes.get(acct.id, []), sold.get(acct.id, [])))
    business: dict[str, BusinessForecast] = {}
    for item in sorted(results, key=lambda r: r.currency):
        prior = business.get(item.currency) or BusinessForecast(item.currency, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        kinds = {kind: sum(line.amount_minor for line in item.lines if line.kind == kind)
                 for kind in ("subscription", "overage", "boost")}
        business[item.currency] = BusinessForecast(
            currency=item.currency, accounts=prior.accounts + 1, calls_so_far=prior.calls_so_far + item.calls_so_far,
            projected_calls=prior.projected_calls + item.projected_calls,
            subscription_minor=prior.subscription_minor + kinds["subscription"],
            overage_minor=prior.overage_minor + kinds["overage"], boost_minor=prior.boost_minor + kinds["boost"],
            subtotal_minor=prior.subtotal_minor + item.subtotal_minor,
            tax_minor=prior.tax_minor + int(item.tax["amount_minor"]), total_minor=prior.total_minor + item.total_minor)
    return Forecast(period=period.name, now=now.isoformat().replace("+00:00", "Z"), cost_currency=catalog.currency,
                    accounts=results, business=business,
                    projected_cost_minor=sum(r.projected_cost_minor for r in results))


def _account_forecast(invoicer: Invoicer, account: Account, period: Period, now: datetime, sofar: SoFar,
                      changes: Sequence[Any], boosts: Sequence[Any]) -> AccountForecast:
    catalog = invoicer.catalog
    sub = account.subscription
    plan = catalog.plans[sub.plan]
    begin = max(period.start, aware(account.created_at))
    elapsed = Decimal((now - begin).total_seconds()) / DAY
    active = Decimal((period.end - begin).total_seconds()) / DAY
    if elapsed > 0:
        rate = Decimal(sofar.calls) / elapsed
        demand = _half_up(Decimal(sofar.calls) * active / elapsed)
        cost_nanos = _half_up(Decimal(sofar.cost_nanos) * active / elapsed)
    else:
        rate, demand, cost_nanos = Decimal(0), sofar.calls, sofar.cost_nanos
    allowance: int | None = None
    if not plan.unlimited_calls:
        quota = sub.custom_quota if sub.custom_quota is not None else plan.included_calls
        allowance = quota + _boost_calls(account.boosts, period)
    payg = plan.overage == "payg_optional" and sub.overage_enabled
    capped = allowance is not None and not payg and plan.overage != "unlimited"
    projected = max(sofar.calls, min(demand, allowance)) if capped and allowance is not None else demand
    overage_by_plan = dict(sofar.overage_by_plan)
    settled = sum(overage_by_plan.values())
    overage = settled
    if payg and allowance is not None:
        overage = max(settled, projected - allowance)
        if overage > settled:
            overage_by_plan[sub.plan] = overage_by_plan.get(sub.plan, 0) + overage - settled
    lines: list[Line] = invoicer.lines_for(account, period, AccountUsage(overage_by_plan=overage_by_plan),
                                           list(changes), list(boosts))
    subtotal = sum(line.amount_minor for line in lines)
    tax = invoicer.tax.tax_for(account.country, account.region, account.tax_id, subtotal,
                               (period.end - timedelta(days=1)).date(), invoicer.seller.country)
    return AccountForecast(
        account=account.id, currency=account.currency, plan=sub.plan, overage_enabled=sub.overage_enabled,
        period=period.name, elapsed_days=str(elapsed.quantize(RATE_PLACES, rounding=ROUND_HALF_UP)),
        days_in_period=period.days, calls_so_far=sofar.calls,
        daily_run_rate=str(rate.quantize(RATE_PLACES, rounding=ROUND_HALF_UP)), demand_calls=demand,
        projected_calls=projected, allowance=allowance, projected_overage_calls=overage,
        cost_so_far_minor=nanos_to_minor(sofar.cost_nanos), projected_cost_minor=nanos_to_minor(cost_nanos),
        lines=[ForecastLine(line.kind, line.description, line.quantity, line.unit_amount_minor, line.amount_minor)
               for line in lines],
        subtotal_minor=subtotal,
        tax={"rate": str(tax.rate), "jurisdiction": tax.jurisdiction, "reverse_charge": tax.reverse_charge,
             "note": tax.note, "amount_minor": tax.amount_minor},
        total_minor=subtotal + tax.amount_minor)
