"""The operator's views across accounts: the revenue report by month, this month's KPIs, usage anomalies and the
audit log. Money is integer minor units per currency (never converted between currencies); percentages are
decimal strings with 2 places, or null when there is nothing to divide by (billing/reports.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.context import ApiContext
from api.errors import ApiError
from api.pagination import Cursor, Limit, Page
from api.params import AuthCaller, Ctx, needs
from api.routes._common import UNAVAILABLE
from billing.reports import revenue_report
from billing.times import iso

router = APIRouter(tags=["operator"])
PERIOD = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
Month = Annotated[str, Query(pattern=PERIOD, description="A month, YYYY-MM (UTC).")]


class AccountCounts(BaseModel):
    free_at_start: int
    converted: int                 # free at the start, on a paid plan by a change during the month
    conversion_pct: str | None
    paying_at_start: int
    churned: int                   # paying at the start, not at the end (free plan or suspended)
    churn_pct: str | None
    paying_at_end: int
    free_at_end: int


class StatusFigures(BaseModel):
    invoices: int
    total_minor: int


class CurrencyFigures(BaseModel):
    """One currency's month: MRR and ARR at the month's end, invoiced revenue of the month's invoices (void
    excluded) by line kind, tax, and invoices by status."""

    currency: str
    mrr_minor: int
    arr_minor: int
    mrr_previous_minor: int
    mrr_growth_pct: str | None
    paying_accounts: int
    invoices: int
    subscription_minor: int
    overage_minor: int
    boost_minor: int
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    tax_collected_minor: int       # on paid invoices
    by_status: dict[str, StatusFigures]


class PaymentRates(BaseModel):
    """Card and PayPal charges attempted in the month (bank transfers excluded)."""

    attempts: int
    succeeded: int
    failed: int
    success_rate_pct: str | None


class MonthReport(BaseModel):
    period: str
    accounts: AccountCounts
    currencies: dict[str, CurrencyFigures]
    payments: PaymentRates


class RevenueReport(BaseModel):
    from_: str = Field(alias="from")
    to: str
    months: list[MonthReport]


class CurrencyKpis(BaseModel):
    currency: str
    mrr_minor: int
    arr_minor: int
    paying_accounts: int
    arpa_minor: int | None         # MRR / paying accounts, rounded half up; null without paying accounts


class Kpis(BaseModel):
    """This month so far (UTC): MRR and paying accounts now, churn since the month's start, payment success."""

    period: str
    as_of: str
    paying_accounts: int
    churned: int
    churn_pct: str | None
    payment_success_rate_pct: str | None
    payment_attempts: int
    currencies: dict[str, CurrencyKpis]


class AnomalyView(BaseModel):
    account: str
    day: str                       # YYYY-MM-DD (UTC)
    calls: int
    trailing_avg: float            # calls a day over the days before (not money)
    ratio: float                   # calls / trailing_avg


class Anomalies(BaseModel):
    period: str
    data: list[AnomalyView]


class AuditEntryView(BaseModel):
    id: int
    at: str
    actor: str                     # operator, member:mem_..., cli, dunning, payments:stripe, ...
    action: str                    # e.g. subscription.plan, payment.refund, invoice.status
    account: str | None
    details: dict[str, Any]


def _month(ctx: ApiContext) -> str:
    now = ctx.now()
    return f"{now.year:04d}-{now.month:02d}"


@router.get("/reports/revenue", response_model=RevenueReport, summary="Revenue by month (operator)",
            openapi_extra=needs("operator"))
def revenue(ctx: Ctx, caller: AuthCaller, first: Annotated[str, Query(alias="from", pattern=PERIOD,
                                                                      description="First month, YYYY-MM.")],
            to: Month) -> dict[str, object]:
    """One report per month from `from` to `to` (both included, at most 240): accounts (conversion, churn),
    per currency MRR, ARR, MRR growth, invoiced revenue by line kind, tax, invoices by status, and payment
    success rates. Definitions: billing/reports.py. 400 bad_range (`from` after `to`, too many months)."""
    caller.require("operator")
    accounts = ctx.accounts
    months = revenue_report(accounts.sessions, accounts.catalog, first, to)
    return {"from": first, "to": to, "months": [m.to_dict() for m in months]}


def _half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


@router.get("/reports/kpis", response_model=Kpis, summary="This month's KPIs (operator)",
            openapi_extra=needs("operator"))
def kpis(ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    """The current month's figures from the revenue report: MRR, ARR and paying accounts per currency (now),
    ARPA (average revenue per paying account), churn of paid accounts since the month's start and the payment
    success rate of the month's charges."""
    caller.require("operator")
    accounts = ctx.accounts
    period = _month(ctx)
    [month] = revenue_report(accounts.sessions, accounts.catalog, period, period)
    return {"period": period, "as_of": iso(ctx.now()),
            "paying_accounts": month.accounts.paying_at_end, "churned": month.accounts.churned,
            "churn_pct": month.accounts.churn_pct, "payment_success_rate_pct": month.payments["success_rate_pct"],
            "payment_attempts": month.payments["attempts"],
            "currencies": {cur: {"currency": cur, "mrr_minor": f.mrr_minor, "arr_minor": f.arr_minor,
                                 "paying_accounts": f.paying_accounts,
                                 "arpa_minor": _half_up(f.mrr_minor, f.paying_accounts) if f.paying_accounts
                                 else None}
                           for cur, f in month.currencies.items()}}


@router.get("/anomalies", response_model=Anomalies, summary="Usage anomalies (operator)", responses=UNAVAILABLE,
            openapi_extra=needs("operator"))
def anomalies(ctx: Ctx, caller: AuthCaller, period: Annotated[str | None, Query(
                  pattern=PERIOD, description="A month, YYYY-MM; default: the current one.")] = None,
              account_id: Annotated[str | None, Query(pattern=r"^[a-z0-9]{4,32}$")] = None) -> dict[str, object]:
    """Days of the month on which an account made more than 3 times its trailing 7-day average of calls (at
    least 10 calls; billing_worker/anomalies.py), by account and day. 503 usage_history_unavailable."""
    caller.require("operator")
    from billing_worker.anomalies import usage_anomalies
    chosen = period or _month(ctx)
    with ctx.clickhouse() as ch:
        found = usage_anomalies(ch, chosen, account_id)
    return {"period": chosen, "data": [{"account": a.acct, "day": a.day.isoformat(), "calls": a.calls,
                                        "trailing_avg": a.trailing_avg, "ratio": a.ratio} for a in found]}


@router.get("/audit-log", response_model=Page[AuditEntryView], summary="Audit log (operator)",
            openapi_extra=needs("operator"))
def audit_log(ctx: Ctx, caller: AuthCaller, account_id: Annotated[str | None, Query(
                  pattern=r"^[a-z0-9]{4,32}$", description="Only this account's entries.")] = None,
              limit: Limit = 20, starting_after: Cursor = None) -> dict[str, object]:
    """Every admin change, newest first (who, what, on which account, the details); the cursor is an entry id.
    404 account_not_found."""
    caller.require("operator")
    before = None
    if starting_after is not None:
        if not (starting_after.isascii() and starting_after.isdigit() and len(starting_after) <= 10
                and int(starting_after) < 2**31):
            raise ApiError(400, "invalid_cursor", "This cursor is not from this list.", param="starting_after")
        before = int(starting_after)
    entries = ctx.accounts.audit_log(account_id, limit + 1, before=before)
    page = entries[:limit]
    has_more = len(entries) > limit
    return {"object": "list", "data": page, "has_more": has_more,
            "next_cursor": str(page[-1]["id"]) if has_more else None}
