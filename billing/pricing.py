"""The pricing rules of one invoice (docs/billing.md), as pure functions: plan history, usage and boosts in,
lines out. Money is integer minor units; every division is Decimal, rounded half-up to the minor unit per line.

- Base fee by days: each day of the period is billed at the plan the account had at the end of that day (an
  upgrade's day at the new plan; downgrades take effect at the start of a period). A plan's line is
  price x days on it / days in the whole calendar month. Days before the account existed are not billed.
- Overage: calls settled as overage on a plan x that plan's overage price.
- Boosts sold in the period: a line each.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from billing.times import aware
from gateway.catalog import Catalog

NANOS_PER_MINOR = 10**7        # list costs are nano-units of the currency; minor units are 1/100


def half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def nanos_to_minor(nanos: int) -> int:
    return half_up(Decimal(nanos) / NANOS_PER_MINOR)


@dataclass(frozen=True)
class Period:
    """A UTC calendar month, `YYYY-MM`."""

    name: str

    @property
    def year(self) -> int:
        return int(self.name[:4])

    @property
    def month(self) -> int:
        return int(self.name[5:7])

    @property
    def days(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """00:00 UTC on the 1st of the next month: when the period's invoice is issued."""
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class Line:
    kind: str                  # subscription | overage | boost
    description: str
    quantity: str              # "19/30" days of the month, a number of calls, "1"
    unit_amount_minor: int     # the monthly price, the price per call, the boost's price
    amount_minor: int


@dataclass(frozen=True)
class PlanChangeAt:
    at: datetime
    to_plan: str


@dataclass
class ModelUsage:
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nanos: int = 0


@dataclass
class AccountUsage:
    """One account's settled usage in a period, from ClickHouse (usage_rows FINAL)."""

    overage_by_plan: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, ModelUsage] = field(default_factory=dict)
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nanos: int = 0

    def summary(self) -> dict[str, object]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens, "reasoning_tokens": self.reasoning_tokens,
                "list_cost_minor": nanos_to_minor(self.cost_nanos),
                "by_model": [{"model": m.model, "calls": m.calls, "prompt_tokens": m.prompt_tokens,
                              "completion_tokens": m.completion_tokens, "cost_minor": nanos_to_minor(m.cost_nanos)}
                             for m in sorted(self.by_model.values(), key=lambda m: m.model)]}


def plan_days(period: Period, created_at: datetime, changes: Sequence[PlanChangeAt]) -> dict[str, int]:
    """{plan: days billed on it} in order of first use. `changes` holds every plan change of the account, the
    creation included, in time order."""
    ordered = sorted(changes, key=lambda c: aware(c.at))
    created_at = aware(created_at)
    days: dict[str, int] = {}
    for day in range(period.days):
        day_end = period.start + timedelta(days=day + 1)
        if created_at >= day_end:
            continue
        plan = None
        for change in ordered:
            if aware(change.at) < day_end:
                plan = change.to_plan
        if plan is not None:
            days[plan] = days.get(plan, 0) + 1
    return days


def subscription_lines(period: Period, days_by_plan: Mapping[str, int], catalog: Catalog,
                       currency: str) -> list[Line]:
    lines = []
    for name, days in days_by_plan.items():
        plan = catalog.plans[name]
        price = (plan.prices_minor or {})[currency]
        amount = half_up(Decimal(price) * days / period.days)
        lines.append(Line("subscription", f"{plan.display_name} plan, {days} of {period.days} days of {period.name}",
                          f"{days}/{period.days}", price, amount))
    return lines


def overage_lines(usage: AccountUsage, catalog: Catalog, currency: str) -> list[Line]:
    lines = []
    for name, calls in sorted(usage.overage_by_plan.items()):
        plan = catalog.plans.get(name)
        if plan is None or calls <= 0:
            continue
        price = (plan.overage_prices_minor or {}).get(currency, 0)
        lines.append(Line("overage", f"Pay-as-you-go calls over the {plan.display_name} quota", str(calls), price,
                          price * calls))
    return lines


@dataclass(frozen=True)
class SoldBoost:
    calls: int
    until: datetime
    price_minor: int


def boost_lines(boosts: Iterable[SoldBoost]) -> list[Line]:
    return [Line("boost", f"Boost: {b.calls} extra calls until {aware(b.until).date().isoformat()}", "1",
                 b.price_minor, b.price_minor) for b in boosts]
