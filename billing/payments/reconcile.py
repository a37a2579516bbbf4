"""The payments round's reconciliation: attempts and refunds whose provider answer is missing are settled by
asking the provider, not only by its webhooks.

- `charges(service, cutoff)`: attempts left `processing` (the answer was lost: unreachable, a crash; or the
  provider is still deciding, e.g. a PayPal capture PENDING review) or `requires_action` (the customer may have
  authenticated meanwhile) since before `cutoff`. A provider with `find_attempt` is asked by the attempt's id, or
  by our key when we have no id (Stripe: `metadata.attempt`); a provider that `replays_charges` (PayPal) is sent
  the attempt again with the same idempotency key when we have no id, which answers with its first outcome.
  An attempt Stripe never received is recorded `failed` (`not_received`), so collection and dunning go on.
- `refunds(service, cutoff)`: refunds left `pending` without a credit note (the provider's answer never came).
  A provider with `find_refund` (Stripe, by `metadata.refund`) is asked for it; one it never received, and every
  refund of a provider without `find_refund` (PayPal: PayPal-Request-Id), is sent again with the same key. The
  answer is recorded as `refund()` would have: the credit note, or `failed`.

Both return counts: {settled, not_received, unreachable} and {settled, resent, failed, unreachable}.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from billing.db.models import Invoice, Payment, PaymentMethod, Refund
from billing.payments import refunds as refund_book
from billing.payments.provider import ChargeResult, ProviderUnavailable

if TYPE_CHECKING:
    from billing.payments.service import PaymentService


def charges(service: PaymentService, cutoff: datetime) -> dict[str, int]:
    with service.sessions() as session:
        stuck = [(p.id, p.account_id, p.provider, p.idempotency_key, p.provider_payment_id, p.state, number)
                 for p, number in session.execute(
                     select(Payment, Invoice.number).join(Invoice, Invoice.id == Payment.invoice_id).where(
                         Payment.state.in_(("processing", "requires_action")), Payment.updated_at < cutoff)
                     .order_by(Payment.id))]
    counts = {"settled": 0, "not_received": 0, "unreachable": 0}
    for payment_id, account_id, provider_name, key, provider_id, state, number in stuck:
        provider = service.providers.get(provider_name)
        finder = getattr(provider, "find_attempt", None)
        replays = bool(getattr(provider, "replays_charges", False))
        if provider is None or (finder is None and not replays):
            continue                  # left to the provider's webhooks
        if provider_id is None and state != "processing":
            continue                  # awaiting the customer, nothing to ask about: the next retry supersedes it
        try:
            if provider_id is None and replays:
                result: ChargeResult | None = _replay(service, payment_id, key)
            elif finder is not None:
                result = finder(service.customer(account_id, provider_name), key, provider_id)
            else:
                continue
        except ProviderUnavailable:
            counts["unreachable"] += 1
            continue
        if result is None:
            if state != "processing":
                continue              # an attempt awaiting the customer that the provider lost: leave it to dunning
            result = ChargeResult("failed", None, "not_received", "the provider never received this charge")
            counts["not_received"] += 1
        elif result.state == state:
            continue                  # still deciding, or still awaiting the customer
        else:
            counts["settled"] += 1
        service.record_result(number, payment_id, result)
    return counts


def _replay(service: PaymentService, payment_id: int, key: str) -> ChargeResult | None:
    """The attempt sent again, as it was (same invoice, method and idempotency key)."""
    with service.sessions() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        invoice = session.get(Invoice, payment.invoice_id)
        method = session.get(PaymentMethod, payment.payment_method_id) if payment.payment_method_id else None
        if invoice is None or method is None or not method.provider_method_id:
            return None
        view = service.invoicer.view(invoice)
        customer, method_id = method.provider_customer_id or "", method.provider_method_id
    return service.provider(payment.provider).charge(view, customer, method_id, key)


def refunds(service: PaymentService, cutoff: datetime) -> dict[str, int]:
    with service.sessions() as session:
        stuck = [(r.id, r.amount_minor, r.idempotency_key, p.provider, p.provider_payment_id or "")
                 for r, p in session.execute(
                     select(Refund, Payment).join(Payment, Payment.id == Refund.payment_id).where(
                         Refund.state == "pending", Refund.credit_note_number.is_(None), Refund.created_at < cutoff)
                     .order_by(Refund.id))]
    counts = {"settled": 0, "resent": 0, "failed": 0, "unreachable": 0}
    for refund_id, amount_minor, key, provider_name, provider_payment_id in stuck:
        provider = service.providers.get(provider_name)
        if provider is None:
            continue
        finder = getattr(provider, "find_refund", None)
        try:
            result = finder(provider_payment_id, key) if finder is not None else None
            if result is None:
                result = provider.refund(provider_payment_id, amount_minor, key)
                counts["resent"] += 1
        except ProviderUnavailable:
            counts["unreachable"] += 1
            continue
        view = refund_book.record(service.sessions, refund_id, result, service.now())
        counts["failed" if view["state"] == "failed" else "settled"] += 1
    return counts
