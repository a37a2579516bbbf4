"""The monthly close as the worker runs it: drain first, apply the plan changes that are due, read the period's
usage from ClickHouse, issue the invoices (billing.invoicing), idempotently.

`due_periods()` names the months that ended and have no completed close: the scheduler (in the worker role)
closes them at 00:00 UTC on the 1st, and when the worker starts after missing one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sqlalchemy import select

from billing.db.models import Account, PeriodClose
from billing.errors import InvalidInput
from billing.invoicing import CloseReport, Invoicer, Seller, parse_period
from billing.settings import Settings as BillingSettings
from billing.store import Store
from billing.tax import load_tax_table
from billing_worker.clickhouse import ClickHouse
from billing_worker.invoice_usage import period_usage


def invoicer_for(store: Store, environ: Mapping[str, str] | None = None) -> Invoicer:
    settings = BillingSettings.from_env(environ)
    seller = Seller(settings.seller_name, settings.seller_address, settings.seller_country, settings.seller_tax_id)
    return Invoicer(store.accounts.sessions, store.accounts.catalog, load_tax_table(settings.tax_table), seller,
                    settings.invoice_net_days, clock=store.accounts.clock)


def close(store: Store, ch: ClickHouse, period: str, environ: Mapping[str, str] | None = None,
          progress: Callable[[int, int], None] | None = None, now: datetime | None = None) -> CloseReport:
    """Closes `period` (YYYY-MM); InvalidInput when the month has not ended yet."""
    if parse_period(period).end > (now or datetime.now(UTC)):
        raise InvalidInput(f"The period {period} has not ended yet; it is closed at 00:00 UTC on the 1st of the "
                           "next month.", code="period_not_ended")
    store.accounts.apply_scheduled_changes()
    return invoicer_for(store, environ).close_period(period, period_usage(ch, period), progress=progress)


def _month(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def due_periods(store: Store, now: datetime | None = None) -> list[str]:
    """Ended months, from the first account's month to the last one, that no close has completed."""
    now = now or datetime.now(UTC)
    with store.accounts.sessions() as session:
        first = session.scalar(select(Account.created_at).order_by(Account.created_at).limit(1))
        done = set(session.scalars(select(PeriodClose.period)))
    if first is None:
        return []
    year, month = first.year, first.month
    current = _month(now)
    due = []
    while f"{year:04d}-{month:02d}" < current:
        name = f"{year:04d}-{month:02d}"
        if name not in done:
            due.append(name)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return due
