"""Revenue reports by month, from the database only (docs/billing.md, "Reports").

`revenue_report(sessions, catalog, "2026-01", "2026-11")` gives one `MonthReport` per UTC calendar month. Money
is integer minor units of each currency (never float, never converted between currencies); percentages are
Decimal strings with 2 places, rounded half-up, or None when the denominator is 0.

Definitions (the state of an account at an instant T):
- its plan at T is the `to_plan` of its last plan change (plan_changes, the creation included) with `at` < T; a
  scheduled change (subscriptions.scheduled_at) that is due before T but not applied yet counts as applied at
  its time. Its status at T is the `after` of its last `account.status` audit entry before T, else "active".
  It exists at T when `created_at` < T.
- The month's start is 00:00 UTC on its 1st; its end is 00:00 UTC on the 1st of the next month (= the next
  month's start). "At the end" therefore means the plan of the month's last day, the one its invoice bills for
  that day: a downgrade or cancel scheduled for the period end first shows in the next month.
- **Paying account**: exists, status active, and its plan's monthly price in the account's currency is > 0. A
  **free account**: exists, active, on a plan priced 0 in its currency. (A plan missing from the catalog counts
  as priced 0.)
- **MRR** (per currency): the sum of the monthly catalog price, in the account's currency, of the plan of each
  paying account at the month's end: the normalized monthly subscription revenue of the active paid
  subscriptions (all plans bill monthly, so the price is already the monthly amount; overage, boosts and tax are
  not recurring and are not in it). **ARR** = 12 x MRR.
- **MRR growth** = (MRR - MRR of the month before) / MRR of the month before x 100, per currency.
- **Invoiced revenue**: the invoices of the period (issued on the 1st of the next month), void ones excluded,
  split by line kind (subscription, overage, boost), with the subtotal, the tax and the total. **Tax collected**:
  the tax of the period's paid invoices. `by_status`: the count and total of the period's invoices in each state
  (paid, open, void, uncollectible, draft).
- **Conversion Free -> paid**: of the free accounts at the month's start, those with a plan change from a plan
  priced 0 to a paid one during the month; rate = converted / free at start x 100.
- **Churn of paid accounts**: of the paying accounts at the month's start, those not paying at its end (on a
  free plan, or suspended); rate = churned / paying at start x 100.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from billing.db.models import Account, AuditEntry, Invoice, InvoiceLine, PlanChange, Subscription
from billing.errors import InvalidInput
from billing.invoicing import parse_period
from billing.pricing import Period
from billing.times import aware
from gateway.catalog import Catalog

MAX_MONTHS = 240
LINE_KINDS = ("subscription", "overage", "boost")
INVOICE_STATES = ("paid", "open", "void", "uncollectible", "draft")
CENT = Decimal("0.01")


def percent(numerator: int, denominator: int) -> str | None:
    """numerator / denominator x 100 as a Decimal string with 2 places (half-up); None when denominator is 0."""
    if denominator == 0:
        return None
    return str((Decimal(numerator) * 100 / Decimal(denominator)).quantize(CENT, rounding=ROUND_HALF_UP))


def months(first: str, last: str) -> list[Period]:
    """The months from `first` to `last` (YYYY-MM), both included."""
    start, end = parse_period(first), parse_period(last)
    if (start.year, start.month) > (end.year, end.month):
        raise InvalidInput(f"The first month ({first}) is after the last ({last}).", code="bad_range")
    out: list[Period] = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        out.append(Period(f"{year:04d}-{month:02d}"))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        if len(out) > MAX_MONTHS:
            raise InvalidInput(f"A report covers at most {MAX_MONTHS} months.", code="bad_range")
    return out


def previous(period: Period) -> Period:
    year, month = (period.year - 1, 12) if period.month == 1 else (period.year, period.month - 1)
    return Period(f"{year:04d}-{month:02d}")


@dataclass
class _Timeline:
    """One account's history: (time, value) steps in time order."""

    created_at: datetime
    currency: str
    plans: list[tuple[datetime, str]] = field(default_factory=list)
    statuses: list[tuple[datetime, str]] = field(default_factory=list)
    plan_moves: list[tuple[datetime, str | None, str]] = field(default_factory=list)   # (at, from, to)

    @staticmethod
    def _at(steps: Sequence[tuple[datetime, str]], moment: datetime, default: str | None) -> str | None:
        index = bisect_left([at for at, _ in steps], moment)      # steps strictly before `moment`
        return steps[index - 1][1] if index else default

    def plan_at(self, moment: datetime) -> str | None:
        return self._at(self.plans, moment, None)

    def status_at(self, moment: datetime) -> str:
        return self._at(self.statuses, moment, "active") or "active"


@dataclass(frozen=True)
class AccountCounts:
    """Accounts (all currencies). Rates are percent strings with 2 places, None when nothing to divide by."""

    free_at_start: int
    converted: int
    conversion_pct: str | None
    paying_at_start: int
    churned: int
    churn_pct: str | None
    paying_at_end: int
    free_at_end: int


@dataclass(frozen=True)
class CurrencyFigures:
    """One currency's figures for a month; money in minor units of `currency`."""

    currency: str
    mrr_minor: int
    arr_minor: int
    mrr_previous_minor: int
    mrr_growth_pct: str | None
    paying_accounts: int
    invoices: int                      # not void
    subscription_minor: int
    overage_minor: int
    boost_minor: int
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    tax_collected_minor: int           # on paid invoices
    by_status: dict[str, dict[str, int]]   # state -> {"invoices": n, "total_minor": amount}


@dataclass(frozen=True)
class MonthReport:
    period: str
    accounts: AccountCounts
    currencies: dict[str, CurrencyFigures]
    payments: dict[str, Any] = field(default_factory=dict)   # attempts made in the month: count, succeeded,
    #                                                           failed, success_rate_pct (card and PayPal charges)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _History:
    def __init__(self, session: Session, catalog: Catalog, until: datetime) -> None:
        self.catalog = catalog
        self.accounts: dict[str, _Timeline] = {}
        for account_id, created_at, currency in session.execute(
                select(Account.id, Account.created_at, Account.currency).where(Account.created_at < until)):
            self.accounts[account_id] = _Timeline(aware(created_at), currency)
        moves: dict[str, list[tuple[datetime, int, str | None, str]]] = {}
        for account_id, change_id, at, from_plan, to_plan in session.execute(
                select(PlanChange.account_id, PlanChange.id, PlanChange.at, PlanChange.from_plan, PlanChange.to_plan)
                .where(PlanChange.at < until)):
            moves.setdefault(account_id, []).append((aware(at), change_id, from_plan, to_plan))
        big = 2**62
        for account_id, plan, scheduled, scheduled_at in session.execute(
                select(Subscription.account_id, Subscription.plan, Subscription.scheduled_plan,
                       Subscription.scheduled_at).where(Subscription.scheduled_plan.is_not(None),
                                                        Subscription.scheduled_at < until)):
            if scheduled is not None and scheduled_at is not None:     # due, not applied yet
                moves.setdefault(account_id, []).append((aware(scheduled_at), big, plan, scheduled))
        for account_id, steps in moves.items():
            timeline = self.accounts.get(account_id)
            if timeline is None:
                continue
            steps.sort(key=lambda step: (step[0], step[1]))
            timeline.plans = [(at, to_plan) for at, _, _, to_plan in steps]
            timeline.plan_moves = [(at, from_plan, to_plan) for at, _, from_plan, to_plan in steps]
        for audited, at, details in session.execute(
                select(AuditEntry.account_id, AuditEntry.at, AuditEntry.details)
                .where(AuditEntry.action == "account.status", AuditEntry.at < until)
                .order_by(AuditEntry.at, AuditEntry.id)):
            timeline = self.accounts.get(audited or "")
            if timeline is not None and isinstance(details, dict):
                timeline.statuses.append((aware(at), str(details.get("after", "active"))))

    def price(self, plan: str | None, currency: str) -> int:
        found = self.catalog.plans.get(plan or "")
        return 0 if found is None else (found.prices_minor or {}).get(currency, 0)

    def paying(self, timeline: _Timeline, moment: datetime) -> bool:
        return (timeline.created_at < moment and timeline.status_at(moment) == "active"
                and self.price(timeline.plan_at(moment), timeline.currency) > 0)

    def free(self, timeline: _Timeline, moment: datetime) -> bool:
        return (timeline.created_at < moment and timeline.status_at(moment) == "active"
                and self.price(timeline.plan_at(moment), timeline.currency) == 0)

    def mrr(self, moment: datetime) -> tuple[dict[str, int], dict[str, int]]:
        """({currency: MRR minor}, {currency: paying accounts}) at `moment`."""
        mrr: dict[str, int] = {}
        paying: dict[str, int] = {}
        for timeline in self.accounts.values():
            if self.paying(timeline, moment):
                cur = timeline.currency
                mrr[cur] = mrr.get(cur, 0) + self.price(timeline.plan_at(moment), cur)
                paying[cur] = paying.get(cur, 0) + 1
        return mrr, paying

    def counts(self, period: Period) -> AccountCounts:
        start, end = period.start, period.end
        free_start = paying_start = converted = churned = paying_end = free_end = 0
        for t in self.accounts.values():
            was_free, was_paying = self.free(t, start), self.paying(t, start)
            is_paying = self.paying(t, end)
            free_start += was_free
            paying_start += was_paying
            paying_end += is_paying
            free_end += self.free(t, end)
            if was_free and any(start <= at < end and self.price(src, t.currency) == 0
                                and self.price(dst, t.currency) > 0 for at, src, dst in t.plan_moves):
                converted += 1
            if was_paying and not is_paying:
                churned += 1
        return AccountCounts(free_at_start=free_start, converted=converted,
                             conversion_pct=percent(converted, free_start), paying_at_start=paying_start,
                             churned=churned, churn_pct=percent(churned, paying_start), paying_at_end=paying_end,
                             free_at_end=free_end)


def _invoiced(session: Session, periods: Iterable[str]) -> tuple[
        dict[tuple[str, str], dict[str, int]], dict[tuple[str, str], dict[str, dict[str, int]]]]:
    """Per (period, currency): line kinds, subtotal, tax and total of the non-void invoices, tax on paid ones;
    and the count and total per state."""
    names = list(periods)
    figures: dict[tuple[str, str], dict[str, int]] = {}
    states: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for period, currency, status, count, subtotal, tax, total in session.execute(
            select(Invoice.period, Invoice.currency, Invoice.status, func.count(Invoice.id),
                   func.coalesce(func.sum(Invoice.subtotal_minor), 0), func.coalesce(func.sum(Invoice.tax_minor), 0),
                   func.coalesce(func.sum(Invoice.total_minor), 0))
            .where(Invoice.period.in_(names)).group_by(Invoice.period, Invoice.currency, Invoice.status)):
        key = (period, currency)
        states.setdefault(key, {})[status] = {"invoices": int(count), "total_minor": int(total)}
        row = figures.setdefault(key, {})
        if status != "void":
            for name, value in (("invoices", count), ("subtotal_minor", subtotal), ("tax_minor", tax),
                                ("total_minor", total)):
                row[name] = row.get(name, 0) + int(value)
        if status == "paid":
            row["tax_collected_minor"] = row.get("tax_collected_minor", 0) + int(tax)
    for period, currency, kind, amount in session.execute(
            select(Invoice.period, Invoice.currency, InvoiceLine.kind,
                   func.coalesce(func.sum(InvoiceLine.amount_minor), 0))
            .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
            .where(Invoice.period.in_(names), Invoice.status != "void")
            .group_by(Invoice.period, Invoice.currency, InvoiceLine.kind)):
        row = figures.setdefault((period, currency), {})
        row[f"{kind}_minor"] = row.get(f"{kind}_minor", 0) + int(amount)
    return figures, states


def revenue_report(sessions: sessionmaker[Session], catalog: Catalog, first: str, last: str) -> list[MonthReport]:
    """One report per month from `first` to `last` (YYYY-MM, both included); see the module docstring for the
    definitions. Every currency that appears (accounts or invoices) is listed in every month."""
    periods = months(first, last)
    with sessions() as session:
        history = _History(session, catalog, periods[-1].end)
        figures, states = _invoiced(session, (p.name for p in periods))
    currencies = sorted({t.currency for t in history.accounts.values()} | {cur for _, cur in figures}
                        | {catalog.currency})
    reports: list[MonthReport] = []
    mrr_before, _ = history.mrr(periods[0].start)
    for period in periods:
        mrr, paying = history.mrr(period.end)
        by_currency: dict[str, CurrencyFigures] = {}
        for cur in currencies:
            row = figures.get((period.name, cur), {})
            now, before = mrr.get(cur, 0), mrr_before.get(cur, 0)
            by_state = states.get((period.name, cur), {})
            by_currency[cur] = CurrencyFigures(
                currency=cur, mrr_minor=now, arr_minor=12 * now, mrr_previous_minor=before,
                mrr_growth_pct=percent(now - before, before), paying_accounts=paying.get(cur, 0),
                invoices=row.get("invoices", 0), subscription_minor=row.get("subscription_minor", 0),
                overage_minor=row.get("overage_minor", 0), boost_minor=row.get("boost_minor", 0),
                subtotal_minor=row.get("subtotal_minor", 0), tax_minor=row.get("tax_minor", 0),
                total_minor=row.get("total_minor", 0), tax_collected_minor=row.get("tax_collected_minor", 0),
                by_status={state: by_state.get(state, {"invoices": 0, "total_minor": 0})
                           for state in (*INVOICE_STATES, *sorted(set(by_state) - set(INVOICE_STATES)))})
        reports.append(MonthReport(period.name, history.counts(period), by_currency,
                                   _payment_rates(sessions, period.start, period.end)))
        mrr_before = mrr
    return reports


def _payment_rates(sessions: sessionmaker[Session], start: datetime, end: datetime) -> dict[str, Any]:
    """Provider charges attempted in [start, end): how many succeeded (or were later refunded) and failed."""
    from billing.db.models import Payment
    with sessions() as session:
        states = list(session.scalars(select(Payment.state).where(
            Payment.created_at >= start, Payment.created_at < end, Payment.provider != "bank_transfer")))
    succeeded = sum(s in ("succeeded", "partially_refunded", "refunded") for s in states)
    failed = sum(s == "failed" for s in states)
    return {"attempts": len(states), "succeeded": succeeded, "failed": failed,
            "success_rate_pct": percent(succeeded, succeeded + failed)}
