"""Refunds in the system of record: reserved before the provider is called, recorded with a credit note after.

`reserve()` inserts a `pending` refund under the payment's row lock, so concurrent refunds cannot exceed what was
paid (InvalidInput refund_exceeds_payment), and keeps the reason and actor on the row. `record()` applies the
provider's answer once: `failed` (no credit note), or `succeeded` / `pending` (the provider accepted it) with a
credit note `CN-<year>-<000001>` (gap-free per year from credit_note_counters, row-locked) and the payment moved
to partially_refunded or refunded. A refund whose answer never came stays pending without a credit note until
the payments round settles it (billing.payments.reconcile). Money is integer minor units.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing.db.models import LIVE_PAYMENT_STATES, AuditEntry, CreditNote, CreditNoteCounter, Invoice, Payment, Refund
from billing.errors import Conflict, InvalidInput, NotFound
from billing.payments.provider import RefundResult
from billing.payments.views import refund_view

REFUNDED_STATES = ("succeeded", "partially_refunded", "refunded")
MAX_REASON = 300


@dataclass(frozen=True)
class Reserved:
    refund_id: int
    idempotency_key: str          # invoice-<number>-refund-<n>
    provider: str
    provider_payment_id: str


def reserve(sessions: sessionmaker[Session], number: str, amount_minor: int, reason: str, actor: str,
            now: datetime) -> Reserved:
    """Records a pending refund of `amount_minor` of the invoice's payment. InvalidInput (bad_amount,
    refund_exceeds_payment), NotFound (invoice_not_found), Conflict (nothing_to_refund, refund_in_progress)."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise InvalidInput("A refund is a positive whole number of minor units.", code="bad_amount")
    try:
        with sessions.begin() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number)).first()
            if invoice is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            payment = session.scalars(select(Payment).where(Payment.invoice_id == invoice.id,
                                                            Payment.state.in_(LIVE_PAYMENT_STATES))
                                      .with_for_update()).first()
            if payment is None or payment.state not in REFUNDED_STATES:
                raise Conflict(f"Invoice {number} has no completed payment to refund.", code="nothing_to_refund")
            reserved = session.scalars(select(func.coalesce(func.sum(Refund.amount_minor), 0)).where(
                Refund.payment_id == payment.id, Refund.state.in_(("pending", "succeeded")))).one()
            refundable = payment.amount_minor - int(reserved)
            if amount_minor > refundable:
                raise InvalidInput(
                    f"Cannot refund {amount_minor} {payment.currency} minor units on invoice {number}: it was "
                    f"paid {payment.amount_minor} and {refundable} is still refundable.",
                    code="refund_exceeds_payment")
            count = session.scalars(select(func.count(Refund.id)).where(Refund.payment_id == payment.id)).one()
            refund = Refund(payment_id=payment.id, amount_minor=amount_minor, state="pending",
                            idempotency_key=f"invoice-{number}-refund-{count + 1}", created_at=now,
                            reason=(reason or "Refund").strip()[:MAX_REASON], actor=actor[:64])
            session.add(refund)
            session.flush()
            return Reserved(refund.id, refund.idempotency_key, payment.provider, payment.provider_payment_id or "")
    except IntegrityError:
        raise Conflict(f"Another refund of invoice {number} is being recorded; try again.",
                       code="refund_in_progress") from None


def _ensure_counter(sessions: sessionmaker[Session], year: int) -> None:
    with sessions() as session:
        if session.get(CreditNoteCounter, year) is not None:
            return
    try:
        with sessions.begin() as session:
            session.add(CreditNoteCounter(year=year, last=0))
    except IntegrityError:
        pass


def record(sessions: sessionmaker[Session], refund_id: int, result: RefundResult, now: datetime) -> dict[str, Any]:
    """Applies the provider's answer to a pending refund that has none yet; a refund already answered is left as
    it is (a late or repeated answer changes nothing). Returns the refund's view."""
    _ensure_counter(sessions, now.year)
    with sessions.begin() as session:
        row = session.get(Refund, refund_id, with_for_update=True)
        assert row is not None
        paid = session.get(Payment, row.payment_id, with_for_update=True)
        assert paid is not None
        number = session.scalars(select(Invoice.number).where(Invoice.id == paid.invoice_id)).one()
        if row.state != "pending" or row.credit_note_number is not None:
            return refund_view(row, number, paid.currency)
        row.provider_refund_id = result.provider_id
        if result.state == "failed":
            row.state, row.failure_message = "failed", result.failure_message
            return refund_view(row, number, paid.currency)
        row.state = result.state
        counter = session.scalars(select(CreditNoteCounter).where(CreditNoteCounter.year == now.year)
                                  .with_for_update()).one()
        counter.last += 1
        note = CreditNote(number=f"CN-{now.year}-{counter.last:06d}", invoice_id=paid.invoice_id,
                          amount_minor=row.amount_minor, currency=paid.currency, reason=row.reason or "Refund",
                          created_at=now)
        session.add(note)
        session.flush()
        row.credit_note_number = note.number
        paid.refunded_minor += row.amount_minor
        paid.state = "refunded" if paid.refunded_minor >= paid.amount_minor else "partially_refunded"
        paid.updated_at = now
        session.add(AuditEntry(at=now, actor=row.actor or "payments", action="payment.refund",
                               account_id=paid.account_id,
                               details={"invoice": number, "amount_minor": row.amount_minor,
                                        "credit_note": note.number, "payment_state": paid.state}))
        return refund_view(row, number, paid.currency)
