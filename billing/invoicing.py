"""Monthly close: one invoice per (account, period), issued at 00:00 UTC on the 1st for the month that ended.

`close_period(...)` prices each account (billing.pricing, billing.tax) and inserts its invoice in one
transaction that also allocates the next number of the issue year (`AH-2026-000123`, from invoice_counters,
row-locked): a rolled-back insert gives its number back, so numbering has no gaps. The unique constraint on
(account, period) makes a second close, a concurrent close or a re-run after a crash skip what exists: exactly one
invoice per account, with the same lines. Usage quantities come in from ClickHouse (`usage_rows FINAL`, through
the worker: `usage`); the domain does not read ClickHouse itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from billing.db.models import Account, AuditEntry, Boost, Invoice, InvoiceCounter, InvoiceLine, PeriodClose, PlanChange
from billing.errors import Conflict, InvalidInput, NotFound
from billing.pricing import (
    AccountUsage,
    Line,
    Period,
    PlanChangeAt,
    SoldBoost,
    boost_lines,
    overage_lines,
    plan_days,
    subscription_lines,
)
from billing.tax import TaxTable
from billing.times import iso
from gateway.catalog import Catalog

STATES = ("draft", "open", "paid", "void", "uncollectible")
TRANSITIONS = {"draft": ("open", "void"), "open": ("paid", "void", "uncollectible"), "uncollectible": ("paid", "void"),
               "paid": (), "void": ()}


@dataclass(frozen=True)
class Seller:
    name: str
    address: str
    country: str
    tax_id: str


@dataclass
class CloseReport:
    period: str
    issued: list[str] = field(default_factory=list)       # invoice numbers issued by this run
    existing: int = 0                                     # accounts invoiced before (an earlier or concurrent run)
    total_minor_by_currency: dict[str, int] = field(default_factory=dict)


PERIOD_RE = re.compile(r"^(20[0-9]{2})-(0[1-9]|1[0-2])$")


def parse_period(name: str) -> Period:
    """A `YYYY-MM` month of 2000-2099; InvalidInput (bad_period) otherwise."""
    if not PERIOD_RE.match(name):
        raise InvalidInput(f"A period is a month written YYYY-MM between 2000-01 and 2099-12, not {name[:20]!r}.",
                           code="bad_period")
    return Period(name)


class Invoicer:
    def __init__(self, sessions: sessionmaker[Session], catalog: Catalog, tax: TaxTable, seller: Seller,
                 net_days: int = 14, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or (lambda: datetime.now(UTC).timestamp())
        self.sessions = sessions
        self.catalog = catalog
        self.tax = tax
        self.seller = seller
        self.net_days = net_days

    # -- pricing -------------------------------------------------------------------------------------
    def period_history(self, session: Session, period: Period, account_ids: list[str] | None = None
                ) -> tuple[dict[str, list[PlanChangeAt]], dict[str, list[SoldBoost]]]:
        """Plan changes before the period's end and boosts sold in it, by account (one query each)."""
        changes: dict[str, list[PlanChangeAt]] = {}
        query = select(PlanChange).where(PlanChange.at < period.end).order_by(PlanChange.at, PlanChange.id)
        if account_ids is not None:
            query = query.where(PlanChange.account_id.in_(account_ids))
        for change in session.scalars(query):
            changes.setdefault(change.account_id, []).append(PlanChangeAt(change.at, change.to_plan))
        boosts: dict[str, list[SoldBoost]] = {}
        sold = select(Boost).where(Boost.price_minor.is_not(None), Boost.created_at >= period.start,
                                   Boost.created_at < period.end).order_by(Boost.created_at, Boost.id)
        if account_ids is not None:
            sold = sold.where(Boost.account_id.in_(account_ids))
        for boost in session.scalars(sold):
            if boost.price_minor is not None:
                boosts.setdefault(boost.account_id, []).append(SoldBoost(boost.calls, boost.until, boost.price_minor))
        return changes, boosts

    def lines_for(self, account: Account, period: Period, usage: AccountUsage, changes: list[PlanChangeAt],
                  boosts: list[SoldBoost]) -> list[Line]:
        days = plan_days(period, account.created_at, changes)
        return [*subscription_lines(period, days, self.catalog, account.currency),
                *overage_lines(usage, self.catalog, account.currency), *boost_lines(boosts)]

    def draft(self, account: Account, period: Period, usage: AccountUsage, changes: list[PlanChangeAt],
              boosts: list[SoldBoost], number: str) -> Invoice:
        lines = self.lines_for(account, period, usage, changes, boosts)
        subtotal = sum(line.amount_minor for line in lines)
        tax = self.tax.tax_for(account.country, account.region, account.tax_id, subtotal,
                               (period.end - timedelta(days=1)).date(), self.seller.country)
        total = subtotal + tax.amount_minor
        # On the 1st at 00:00 UTC; a close that runs late (the worker was down) issues when it runs, so numbers
        # follow issue dates and the due date leaves the customer the full net days.
        issued = max(period.end, datetime.fromtimestamp(int(self.clock()), UTC))
        invoice = Invoice(
            number=number, account_id=account.id, period=period.name, status="paid" if total == 0 else "open",
            currency=account.currency, language=account.language, issued_at=issued,
            due_at=issued + timedelta(days=self.net_days), subtotal_minor=subtotal, tax_minor=tax.amount_minor,
            total_minor=total,
            tax={"rate": str(tax.rate), "jurisdiction": tax.jurisdiction, "reverse_charge": tax.reverse_charge,
                 "note": tax.note},
            customer={"id": account.id, "name": account.name, "billing_email": account.billing_email,
                      "country": account.country, "region": account.region, "tax_id": account.tax_id},
            usage=usage.summary() | {"list_cost_currency": self.catalog.currency},
            paid_at=issued if total == 0 else None, created_at=datetime.now(UTC))
        invoice.lines = [InvoiceLine(position=i, kind=line.kind, description=line.description, quantity=line.quantity,
                                     unit_amount_minor=line.unit_amount_minor, amount_minor=line.amount_minor)
                         for i, line in enumerate(lines, 1)]
        return invoice

    # -- the close -----------------------------------------------------------------------------------
    def close_period(self, period_name: str, usage: Mapping[str, AccountUsage], *,
                     progress: Callable[[int, int], None] | None = None, batch: int = 500) -> CloseReport:
        """Issues the period's missing invoices (idempotent); `usage` maps account id -> AccountUsage.

        Accounts are invoiced `batch` to a transaction (numbers allocated in it); when a concurrent close has
        issued one of a batch's invoices first, that batch is redone one account per transaction."""
        period = parse_period(period_name)
        with self.sessions() as session:
            ids = list(session.scalars(select(Account.id).where(Account.created_at < period.end).order_by(Account.id)))
            changes, boosts = self.period_history(session, period)
        report = CloseReport(period.name)
        year = period.end.year
        self._ensure_counter(year)
        done = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            try:
                issued = self._issue_batch(chunk, period, usage, changes, boosts)
                report.issued += issued
                report.existing += len(chunk) - len(issued)
            except IntegrityError:
                for account_id in chunk:
                    number = self._issue(account_id, period, usage.get(account_id, AccountUsage()))
                    if number is None:
                        report.existing += 1
                    else:
                        report.issued.append(number)
            done += len(chunk)
            if progress is not None:
                progress(done, len(ids))
        with self.sessions() as session:
            for currency, total in session.execute(
                    select(Invoice.currency, Invoice.total_minor).where(Invoice.period == period.name)):
                report.total_minor_by_currency[currency] = report.total_minor_by_currency.get(currency, 0) + total
        try:
            with self.sessions.begin() as session:
                session.merge(PeriodClose(period=period.name, closed_at=datetime.now(UTC),
                                          invoices=len(report.issued) + report.existing))
        except IntegrityError:
            pass      # a concurrent close recorded it
        return report

    def _issue_batch(self, account_ids: list[str], period: Period, usage: Mapping[str, AccountUsage],
                     changes: Mapping[str, list[PlanChangeAt]], boosts: Mapping[str, list[SoldBoost]]) -> list[str]:
        year = period.end.year
        issued: list[str] = []
        with self.sessions.begin() as session:
            counter = session.scalars(select(InvoiceCounter).where(InvoiceCounter.year == year)
                                      .with_for_update()).one()
            existing = set(session.scalars(select(Invoice.account_id).where(
                Invoice.period == period.name, Invoice.account_id.in_(account_ids))))
            accounts = {a.id: a for a in session.scalars(select(Account).where(Account.id.in_(account_ids)))}
            for account_id in account_ids:
                if account_id in existing:
                    continue
                counter.last += 1
                number = f"AH-{year}-{counter.last:06d}"
                session.add(self.draft(accounts[account_id], period, usage.get(account_id, AccountUsage()),
                                       changes.get(account_id, []), boosts.get(account_id, []), number))
                issued.append(number)
        return issued

    def _issue(self, account_id: str, period: Period, usage: AccountUsage) -> str | None:
        """One account in its own transaction (the fallback when a batch met a concurrent close)."""
        year = period.end.year
        try:
            with self.sessions.begin() as session:
                counter = session.scalars(select(InvoiceCounter).where(InvoiceCounter.year == year)
                                          .with_for_update()).one()
                exists = session.scalars(select(Invoice.id).where(Invoice.account_id == account_id,
                                                                  Invoice.period == period.name)).first()
                if exists is not None:
                    return None
                account = session.get(Account, account_id)
                assert account is not None
                changes, boosts = self.period_history(session, period, [account_id])
                counter.last += 1
                number = f"AH-{year}-{counter.last:06d}"
                session.add(self.draft(account, period, usage, changes.get(account_id, []),
                                       boosts.get(account_id, []), number))
            return number
        except IntegrityError:
            return None       # a concurrent close inserted this account's invoice first; our number is rolled back

    def _ensure_counter(self, year: int) -> None:
        with self.sessions() as session:
            if session.get(InvoiceCounter, year) is not None:
                return
        try:
            with self.sessions.begin() as session:
                session.add(InvoiceCounter(year=year, last=0))
        except IntegrityError:
            pass

    # -- states --------------------------------------------------------------------------------------
    def set_status(self, number: str, status: str, *, at: datetime | None = None,
                   actor: str = "admin") -> dict[str, Any]:
        """Moves an invoice along draft -> open -> paid | void | uncollectible (uncollectible may still be paid
        or voided); any other move is refused (Conflict). Payments (a later module) call this with "paid"."""
        if status not in STATES:
            raise InvalidInput(f"An invoice status is one of {', '.join(STATES)}.", code="bad_status")
        moment = at or datetime.now(UTC)
        with self.sessions.begin() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number).with_for_update()).first()
            if invoice is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            if status != invoice.status:
                if status not in TRANSITIONS[invoice.status]:
                    raise Conflict(f"Invoice {number} is {invoice.status}; it cannot become {status}.",
                                   code="invalid_transition")
                session.add(AuditEntry(at=moment, actor=actor, action="invoice.status", account_id=invoice.account_id,
                                       details={"number": number, "before": invoice.status, "after": status}))
                invoice.status = status
                if status == "paid":
                    invoice.paid_at = moment
                elif status == "void":
                    invoice.voided_at = moment
        return self.get(number)

    # -- reading -------------------------------------------------------------------------------------
    def get(self, number: str) -> dict[str, Any]:
        with self.sessions() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number)
                                      .options(selectinload(Invoice.lines))).first()
            if invoice is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            return self.view(invoice)

    def history(self, account_id: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            if session.get(Account, account_id) is None:
                raise NotFound(f"No account {account_id!r}.", code="account_not_found")
            invoices = session.scalars(select(Invoice).where(Invoice.account_id == account_id)
                                       .order_by(Invoice.period.desc()).options(selectinload(Invoice.lines)))
            return [self.view(i) for i in invoices]

    def for_period(self, period_name: str) -> list[dict[str, Any]]:
        period = parse_period(period_name)
        with self.sessions() as session:
            invoices = session.scalars(select(Invoice).where(Invoice.period == period.name)
                                       .order_by(Invoice.number).options(selectinload(Invoice.lines)))
            return [self.view(i) for i in invoices]

    def view(self, invoice: Invoice) -> dict[str, Any]:
        """The invoice as the API, the exports and the PDF template see it (money in minor units)."""
        return {"number": invoice.number, "account": invoice.account_id, "period": invoice.period,
                "status": invoice.status, "currency": invoice.currency, "language": invoice.language,
                "issued_at": iso(invoice.issued_at), "due_at": iso(invoice.due_at), "paid_at": iso(invoice.paid_at),
                "seller": {"name": self.seller.name, "address": self.seller.address, "country": self.seller.country,
                           "tax_id": self.seller.tax_id},
                "customer": invoice.customer,
                "lines": [{"kind": line.kind, "description": line.description, "quantity": line.quantity,
                           "unit_amount_minor": line.unit_amount_minor, "amount_minor": line.amount_minor}
                          for line in invoice.lines],
                "subtotal_minor": invoice.subtotal_minor,
                "tax": {**invoice.tax, "amount_minor": invoice.tax_minor},
                "total_minor": invoice.total_minor, "usage": invoice.usage}
