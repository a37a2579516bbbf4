"""Collection and unpaid invoices (dunning).

- `collect()`: charges every open invoice that has no payment yet, with the account's default payment method. A
  charge that does not pay (`failed`, or `requires_action`: the customer must authenticate it) starts dunning, as
  does an invoice charged by hand (`aihub invoice pay`) that did not pay. An account that pays by bank transfer
  is not charged: its open invoice starts dunning when it is overdue (past `due_at`).
- Dunning: a step at each of the days of `retry_days` after dunning started (1, 3, 5, 7 by default,
  AIHUB_DUNNING_RETRY_DAYS), and a notification at the start and at each step:
  - card or PayPal: the step is a retry (a new attempt; one awaiting the customer is cancelled first, see
    billing.payments.service), notified as `payment_failed`, or `payment_action_required` (with what to do: the
    confirmation link) when the attempt needs the customer's authentication;
  - bank transfer: no charge; the step is a `payment_reminder` (transfer the total with the invoice number as
    reference).
  When the last step has not paid, the plan's consequence (`dunning` in config/catalog.toml): `suspend` limits
  the account to the free plan's limits (the subscription is kept; the projection shows the free plan),
  `uncollectible` marks the invoice so. The last notification says which.
- A later success (a retry, the customer authenticating, a new payment method, a bank transfer marked paid, a
  provider webhook) restores the plan at once through `settled` (billing.payments.service's on_paid hook), and
  otherwise at the next `run()` (the worker calls it every minute), with a `payment_recovered` notification.
Every step is idempotent: a dunning row per invoice (primary key), steps counted in it, notifications deduplicated
(`<kind>:<invoice number>:<step>`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import LIVE_PAYMENT_STATES, Dunning, Invoice, Payment, PaymentMethod, Subscription
from billing.errors import BillingError
from billing.notifications import dunning_sentences, record
from billing.payments.service import FAILED_STATES, PaymentService
from billing.times import aware, iso
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
        """Charges open invoices that were never charged and whose account has a card or PayPal on file; starts
        dunning for those that did not pay and for overdue invoices of bank-transfer accounts. Counts: charged,
        failed (did not pay, now in dunning), overdue (bank transfer, now in dunning)."""
        now = self.now()
        with self.sessions() as session:
            charged = select(Payment.invoice_id)
            methods = select(PaymentMethod.account_id).where(PaymentMethod.is_default.is_(True),
                                                             PaymentMethod.provider != "bank_transfer")
            numbers = list(session.scalars(select(Invoice.number).where(
                Invoice.status == "open", Invoice.total_minor > 0, Invoice.id.not_in(charged),
                Invoice.account_id.in_(methods)).order_by(Invoice.id)))
            # charged before (e.g. `aihub invoice pay`) and not paid: failed, or awaiting the customer
            failed_before = list(session.scalars(select(Invoice.number).where(
                Invoice.status == "open",
                Invoice.id.in_(select(Payment.invoice_id).where(Payment.state.in_(FAILED_STATES))),
                Invoice.id.not_in(select(Payment.invoice_id).where(Payment.state.not_in(FAILED_STATES))),
                Invoice.id.not_in(select(Dunning.invoice_id))).order_by(Invoice.id)))
            transfers = select(PaymentMethod.account_id).where(PaymentMethod.is_default.is_(True),
                                                               PaymentMethod.provider == "bank_transfer")
            overdue = list(session.scalars(select(Invoice.number).where(
                Invoice.status == "open", Invoice.total_minor > 0, Invoice.due_at <= now,
                Invoice.account_id.in_(transfers),
                Invoice.id.not_in(select(Payment.invoice_id).where(Payment.state.in_(LIVE_PAYMENT_STATES))),
                Invoice.id.not_in(select(Dunning.invoice_id))).order_by(Invoice.id)))
        for number in failed_before:
            attempts = self.payments.attempts(number)
            self._start(number, attempts[-1] if attempts else None)
        for number in overdue:
            self._start(number, None, transfer=True)
        counts = {"charged": 0, "failed": len(failed_before), "overdue": len(overdue)}
        for number in numbers:
            payment = self._charge(number)
            if payment is None or payment["state"] in FAILED_STATES:
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

    def _start(self, number: str, payment: dict[str, Any] | None, *, transfer: bool = False) -> None:
        now = self.now()
        with self.sessions.begin() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number)).one()
            if session.get(Dunning, invoice.id) is not None:
                return
            first = now + timedelta(days=self.retry_days[0])
            session.add(Dunning(invoice_id=invoice.id, account_id=invoice.account_id, state="retrying",
                                failed_at=now, retries=0, next_retry_at=first, updated_at=now))
            self._notify(session, invoice, payment, 0, first, transfer=transfer)

    def _notify(self, session: Session, invoice: Invoice, payment: dict[str, Any] | None, step: int,
                next_at: datetime | None, *, transfer: bool, consequence: str | None = None) -> None:
        """The notification of a dunning step: payment_reminder (bank transfer), payment_action_required (the
        attempt awaits the customer's authentication), else payment_failed. The payload has the facts (next_at:
        the next step, null at the last; consequence: the last step's; failure_code; action_url), from which
        emails are written in the account's language, and the English sentences webhook receivers read (next,
        action)."""
        payload: dict[str, Any] = {"number": invoice.number, "period": invoice.period,
                                   "total_minor": invoice.total_minor, "currency": invoice.currency,
                                   "due_at": iso(invoice.due_at), "retries": step, "transfer": transfer,
                                   "next_at": iso(next_at), "last": next_at is None, "consequence": consequence}
        if transfer:
            kind = "payment_reminder"
        else:
            attempt = payment or {}
            kind = "payment_action_required" if attempt.get("state") == "requires_action" else "payment_failed"
            payload["reason"] = attempt.get("failure_message") or attempt.get("failure_code") or "not charged"
            payload["failure_code"] = attempt.get("failure_code")
            if kind == "payment_action_required":
                payload["action_url"] = attempt.get("action_url")
        payload["next"], action = dunning_sentences(kind, payload, "en")
        if kind == "payment_action_required":
            payload["action"] = action
        record(session, invoice.account_id, kind, f"{kind}:{invoice.number}:{step}", payload, self.now())

    # -- the schedule --------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        """Recovers invoices paid meanwhile, takes the steps that are due (a retry, or a reminder for bank
        transfer), applies consequences; counts: recovered, retried, reminded, exhausted."""
        now = self.now()
        counts = {"recovered": 0, "retried": 0, "reminded": 0, "exhausted": 0}
        with self.sessions() as session:
            rows = list(session.execute(select(Dunning.invoice_id, Invoice.number, Invoice.status,
                                               Dunning.next_retry_at, Dunning.state, Dunning.account_id)
                                        .join(Invoice, Invoice.id == Dunning.invoice_id)
                                        .where(Dunning.state.in_(("retrying", "exhausted")))))
        for invoice_id, number, status, next_at, state, account_id in rows:
            if status in ("paid", "void"):          # paid, or the debt was cancelled
                self._recover(invoice_id)
                counts["recovered"] += 1
            elif state == "retrying" and next_at is not None and aware(next_at) <= now:
                if self._pays_by_transfer(account_id):
                    counts["exhausted" if self._failed_again(invoice_id, None, transfer=True) else "reminded"] += 1
                    continue
                payment = self._charge(number)
                if payment is not None and payment["state"] == "succeeded":
                    self._recover(invoice_id)
                    counts["recovered"] += 1
                elif payment is None or payment["state"] in FAILED_STATES:
                    counts["exhausted" if self._failed_again(invoice_id, payment) else "retried"] += 1
        return counts

    def _pays_by_transfer(self, account_id: str) -> bool:
        with self.sessions() as session:
            return session.scalars(select(PaymentMethod.provider).where(
                PaymentMethod.account_id == account_id, PaymentMethod.is_default.is_(True))).first() \
                == "bank_transfer"

    def _failed_again(self, invoice_id: int, payment: dict[str, Any] | None, *, transfer: bool = False) -> bool:
        """Counts a step that did not pay; True when it was the last one (the consequence is applied)."""
        now = self.now()
        with self.sessions.begin() as session:
            row = session.get(Dunning, invoice_id, with_for_update=True)
            invoice = session.get(Invoice, invoice_id)
            assert row is not None and invoice is not None
            row.retries += 1
            row.updated_at = now
            last = row.retries >= len(self.retry_days)
            row.next_retry_at = None if last else aware(row.failed_at) + timedelta(days=self.retry_days[row.retries])
            consequence = None
            if last:
                sub = session.get(Subscription, invoice.account_id)
                plan = self.catalog.plans.get(sub.plan if sub else "")
                consequence = plan.dunning if plan else "uncollectible"
                row.state, row.consequence = "exhausted", consequence
            self._notify(session, invoice, payment, row.retries, row.next_retry_at, transfer=transfer,
                         consequence=consequence)
            account_id, number = invoice.account_id, invoice.number
        if consequence is None:
            return False
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
