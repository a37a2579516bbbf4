"""Collection and failed payments (dunning).

- `collect()`: charges every open invoice that has no payment yet, with the account's default payment method
  (accounts paying by bank transfer are left to the transfer). A failed charge starts dunning.
- Dunning: retries at the days of `retry_days` after the first failure (1, 3, 5, 7 by default,
  AIHUB_DUNNING_RETRY_DAYS), a `payment_failed` notification at each failure; when the last retry fails, the
  plan's consequence (`dunning` in config/catalog.toml): `suspend` limits the account to the free plan's limits
  (the subscription is kept; the projection shows the free plan), `uncollectible` marks the invoice so.
- A later success (a retry, a new payment method, a bank transfer, a provider webhook) restores the plan at once
  when the retry succeeds, and otherwise at the next `run()` (the worker calls it every minute), with a
  `payment_recovered` notification.
Every step is idempotent: a dunning row per invoice (primary key), retries counted in it, notifications deduplicated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import Dunning, Invoice, Payment, PaymentMethod, Subscription
from billing.errors import BillingError
from billing.notifications import record
from billing.payments.service import PaymentService
from billing.times import aware
from gateway.catalog import Catalog

DEFAULT_RETRY_DAYS = (1, 3, 5, 7)


class Dunner:
    def __init__(self, sessions: sessionmaker[Session], payments: PaymentService, accounts: AccountService,
                 catalog: Catalog, retry_days: Sequence[int] = DEFAULT_RETRY_DAYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.payments = payments
        self.accounts = accounts
        self.catalog = catalog
        self.retry_days = tuple(retry_days)
        self.clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- collection ----------------------------------------------------------------------------------
    def collect(self) -> dict[str, int]:
        """Charges open invoices that were never charged and whose account has a card or PayPal on file."""
        with self.sessions() as session:
            charged = select(Payment.invoice_id)
            methods = select(PaymentMethod.account_id).where(PaymentMethod.is_default.is_(True),
                                                             PaymentMethod.provider != "bank_transfer")
            numbers = list(session.scalars(select(Invoice.number).where(
                Invoice.status == "open", Invoice.total_minor > 0, Invoice.id.not_in(charged),
                Invoice.account_id.in_(methods)).order_by(Invoice.id)))
        with self.sessions() as session:           # charged before (e.g. `aihub invoice pay`) and failed
            failed_before = list(session.scalars(select(Invoice.number).where(
                Invoice.status == "open", Invoice.id.in_(select(Payment.invoice_id).where(Payment.state == "failed")),
                Invoice.id.not_in(select(Payment.invoice_id).where(Payment.state != "failed")),
                Invoice.id.not_in(select(Dunning.invoice_id))).order_by(Invoice.id)))
        for number in failed_before:
            self._start(number, None)
        counts = {"charged": 0, "failed": len(failed_before)}
        for number in numbers:
            payment = self._charge(number)
            if payment is None or payment["state"] == "failed":
                counts["failed"] += 1
                self._start(number, payment)
            else:
                counts["charged"] += 1
        return counts

    def _charge(self, number: str) -> dict[str, Any] | None:
        try:
            return self.payments.charge_invoice(number)
        except BillingError:        # no method any more, provider unreachable: dunning retries later
            return None

    def _start(self, number: str, payment: dict[str, Any] | None) -> None:
        now = self.now()
        with self.sessions.begin() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number)).one()
            if session.get(Dunning, invoice.id) is not None:
                return
            session.add(Dunning(invoice_id=invoice.id, account_id=invoice.account_id, state="retrying",
                                failed_at=now, retries=0, next_retry_at=now + timedelta(days=self.retry_days[0]),
                                updated_at=now))
            self._notify_failure(session, invoice, payment, 0, now + timedelta(days=self.retry_days[0]))

    def _notify_failure(self, session: Session, invoice: Invoice, payment: dict[str, Any] | None, retries: int,
                        next_at: datetime | None) -> None:
        reason = (payment or {}).get("failure_message") or (payment or {}).get("failure_code") or "not charged"
        nxt = (f"We will try again on {next_at.date().isoformat()}; you can also update your payment method."
               if next_at else "No further attempts will be made; please pay by another method.")
        record(session, invoice.account_id, "payment_failed", f"payment_failed:{invoice.number}:{retries}",
               {"number": invoice.number, "period": invoice.period, "total_minor": invoice.total_minor,
                "currency": invoice.currency, "reason": reason, "next": nxt, "retries": retries},
               self.now())

    # -- the schedule --------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        """Recovers invoices paid meanwhile, retries what is due, applies consequences; the counts."""
        now = self.now()
        counts = {"recovered": 0, "retried": 0, "exhausted": 0}
        with self.sessions() as session:
            rows = list(session.execute(select(Dunning.invoice_id, Invoice.number, Invoice.status,
                                               Dunning.next_retry_at, Dunning.state)
                                        .join(Invoice, Invoice.id == Dunning.invoice_id)
                                        .where(Dunning.state.in_(("retrying", "exhausted")))))
        for invoice_id, number, status, next_at, state in rows:
            if status in ("paid", "void"):          # paid, or the debt was cancelled
                self._recover(invoice_id)
                counts["recovered"] += 1
            elif state == "retrying" and next_at is not None and aware(next_at) <= now:
                payment = self._charge(number)
                if payment is not None and payment["state"] == "succeeded":
                    self._recover(invoice_id)
                    counts["recovered"] += 1
                elif payment is None or payment["state"] == "failed":
                    counts["exhausted" if self._failed_again(invoice_id, payment) else "retried"] += 1
        return counts

    def _failed_again(self, invoice_id: int, payment: dict[str, Any] | None) -> bool:
        """Counts a failed retry; True when it was the last one (the consequence is applied)."""
        now = self.now()
        with self.sessions.begin() as session:
            row = session.get(Dunning, invoice_id, with_for_update=True)
            invoice = session.get(Invoice, invoice_id)
            assert row is not None and invoice is not None
            row.retries += 1
            row.updated_at = now
            last = row.retries >= len(self.retry_days)
            row.next_retry_at = None if last else aware(row.failed_at) + timedelta(days=self.retry_days[row.retries])
            self._notify_failure(session, invoice, payment, row.retries, row.next_retry_at)
            if not last:
                return False
            sub = session.get(Subscription, invoice.account_id)
            plan = self.catalog.plans.get(sub.plan if sub else "")
            row.state, row.consequence = "exhausted", (plan.dunning if plan else "uncollectible")
            consequence, account_id, number = row.consequence, invoice.account_id, invoice.number
        if consequence == "suspend":
            self.accounts.set_restricted(account_id, True, actor="dunning")
        else:
            self.payments.invoicer.set_status(number, "uncollectible", at=now, actor="dunning")
        return True

    def settled(self, number: str) -> None:
        """Called when an invoice is paid or voided (billing.payments.service's hook): restores at once."""
        with self.sessions() as session:
            invoice_id = session.scalars(select(Invoice.id).where(Invoice.number == number)).first()
        if invoice_id is not None:
            self._recover(invoice_id)

    def _recover(self, invoice_id: int) -> None:
        now = self.now()
        with self.sessions.begin() as session:
            row = session.get(Dunning, invoice_id, with_for_update=True)
            invoice = session.get(Invoice, invoice_id)
            if row is None or invoice is None or row.state == "recovered":
                return
            row.state, row.next_retry_at, row.updated_at = "recovered", None, now
            record(session, invoice.account_id, "payment_recovered", f"payment_recovered:{invoice.number}",
                   {"number": invoice.number, "period": invoice.period, "total_minor": invoice.total_minor,
                    "currency": invoice.currency}, now)
            account_id = invoice.account_id
            still_exhausted = session.scalars(select(Dunning.invoice_id).where(
                Dunning.account_id == account_id, Dunning.state == "exhausted", Dunning.consequence == "suspend",
                Dunning.invoice_id != invoice_id)).first()
        if still_exhausted is None:
            self.accounts.set_restricted(account_id, False, actor="dunning")
