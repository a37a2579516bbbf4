"""What the payment service returns: plain dicts of payments, payment methods, refunds and credit notes.

Money is integer minor units with its currency; times are ISO 8601 UTC (`2026-12-02T09:00:00Z`). A payment's
client secret is never in a view (only `PaymentService.pending_action` returns it, for the customer's own page).
"""

from __future__ import annotations

from typing import Any

from billing.db.models import CreditNote, Payment, PaymentMethod, Refund
from billing.times import iso


def payment_view(payment: Payment, number: str) -> dict[str, Any]:
    """{id, invoice, account, provider, attempt, amount_minor, refunded_minor, currency, state,
    provider_payment_id, failure_code, failure_message, idempotency_key, action_required, action_url, created_at,
    updated_at}. `action_required`: the customer must authenticate or approve the payment (state
    requires_action); `action_url`: where, when known."""
    return {"id": payment.id, "invoice": number, "account": payment.account_id, "provider": payment.provider,
            "attempt": payment.attempt, "amount_minor": payment.amount_minor,
            "refunded_minor": payment.refunded_minor, "currency": payment.currency, "state": payment.state,
            "provider_payment_id": payment.provider_payment_id, "failure_code": payment.failure_code,
            "failure_message": payment.failure_message, "idempotency_key": payment.idempotency_key,
            "action_required": payment.state == "requires_action", "action_url": payment.action_url,
            "created_at": iso(payment.created_at), "updated_at": iso(payment.updated_at)}


def method_view(method: PaymentMethod) -> dict[str, Any]:
    """{id, account, provider, provider_method_id, brand, last4, default, created_at}: never a card number."""
    return {"id": method.id, "account": method.account_id, "provider": method.provider,
            "provider_method_id": method.provider_method_id, "brand": method.brand, "last4": method.last4,
            "default": method.is_default, "created_at": iso(method.created_at)}


def refund_view(refund: Refund, number: str, currency: str, reason: str | None = None) -> dict[str, Any]:
    """{id, payment (the refunded payment's id), invoice, amount_minor, currency, state (pending | succeeded |
    failed), provider_refund_id, credit_note, reason, failure_message, created_at}. `reason`: the refund's, else
    the one given (its credit note's, for refunds recorded before refunds kept their reason)."""
    return {"id": refund.id, "payment": refund.payment_id, "invoice": number, "amount_minor": refund.amount_minor,
            "currency": currency, "state": refund.state, "provider_refund_id": refund.provider_refund_id,
            "credit_note": refund.credit_note_number, "reason": refund.reason or reason,
            "failure_message": refund.failure_message, "created_at": iso(refund.created_at)}


def credit_note_view(note: CreditNote, number: str) -> dict[str, Any]:
    """{number (CN-2026-000001), invoice, amount_minor, currency, reason, created_at}."""
    return {"number": note.number, "invoice": number, "amount_minor": note.amount_minor, "currency": note.currency,
            "reason": note.reason, "created_at": iso(note.created_at)}
