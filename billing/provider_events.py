"""Payment-provider webhooks: verified at the edge (api.webhooks), recorded here once, applied by the worker.

`record(...)` inserts the event under a unique (provider, event id): a replayed or re-sent event is acknowledged
and changes nothing. `apply(...)` (the worker's `process_provider_event` actor) turns an event into payment state
through billing.payments.service, idempotently; an event of a type we do not act on is marked ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing.db.models import ProviderEvent
from billing.payments.provider import ChargeResult
from billing.payments.service import PaymentService


@dataclass(frozen=True)
class Recorded:
    event_id: int | None      # our row id; None when the event was seen before
    duplicate: bool


def record(sessions: sessionmaker[Session], provider: str, provider_event_id: str, event_type: str,
           payload: Mapping[str, Any], now: datetime | None = None) -> Recorded:
    try:
        with sessions.begin() as session:
            event = ProviderEvent(provider=provider, provider_event_id=provider_event_id, type=event_type[:100],
                                  payload=dict(payload), state="received", received_at=now or datetime.now(UTC))
            session.add(event)
            session.flush()
            return Recorded(event.id, False)
    except IntegrityError:
        return Recorded(None, True)


def pending(sessions: sessionmaker[Session], limit: int = 100) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(ProviderEvent.id).where(ProviderEvent.state == "received")
                                    .order_by(ProviderEvent.id).limit(limit)))


STRIPE_STATES = {"payment_intent.succeeded": "succeeded", "payment_intent.payment_failed": "failed",
                 "payment_intent.processing": "processing", "payment_intent.requires_action": "requires_action"}
PAYPAL_STATES = {"PAYMENT.CAPTURE.COMPLETED": "succeeded", "PAYMENT.CAPTURE.DENIED": "failed",
                 "PAYMENT.CAPTURE.DECLINED": "failed", "PAYMENT.CAPTURE.PENDING": "processing"}


def _update(event: ProviderEvent) -> tuple[str, ChargeResult, str | None, str | None, str | None] | None:
    """(provider payment id, result, our attempt's idempotency key and account if the provider carries them,
    another id the payment may be recorded under), or None for an event we do not act on. A PayPal capture event
    names the capture (what a payment holds once captured, and what a refund needs) and, in
    supplementary_data.related_ids, its order (what an attempt holds before its capture)."""
    payload: Any = event.payload
    if event.provider == "stripe" and event.type in STRIPE_STATES:
        intent = payload.get("data", {}).get("object", {})
        error = intent.get("last_payment_error") or {}
        metadata = intent.get("metadata") or {}
        state = STRIPE_STATES[event.type]
        if state == "failed" and error.get("code") == "authentication_required":
            state = "requires_action"     # off-session 3-D Secure: still confirmable by the customer (Stripe's
            #                               payment_failed for it); it stays the live attempt until cancelled
        result = ChargeResult(state, str(intent.get("id", "")),  # type: ignore[arg-type]
                              error.get("decline_code") or error.get("code"), error.get("message"))
        return str(intent.get("id", "")), result, metadata.get("attempt"), metadata.get("account"), None
    if event.provider == "paypal" and event.type in PAYPAL_STATES:
        resource = payload.get("resource", {})
        capture = str(resource.get("id") or "")
        order = resource.get("supplementary_data", {}).get("related_ids", {}).get("order_id")
        state = PAYPAL_STATES[event.type]
        return (capture, ChargeResult(state, capture), None, None,  # type: ignore[arg-type]
                None if not order else str(order))
    return None


def apply(sessions: sessionmaker[Session], event_id: int, payments: PaymentService) -> str:
    """Applies one recorded event (idempotent); its new state: applied | ignored."""
    with sessions() as session:
        event = session.get(ProviderEvent, event_id)
        if event is None or event.state != "received":
            return event.state if event is not None else "missing"
        update = _update(event)
    state = "ignored"
    provider = "stripe" if event.provider == "stripe" else "paypal"
    if update is not None and update[0] and (
            payments.apply_provider_update(provider, update[0], update[1], update[2], update[3])
            or (update[4] is not None and payments.apply_provider_update(provider, update[4], update[1]))):
        state = "applied"
    with sessions.begin() as session:
        row = session.get(ProviderEvent, event_id, with_for_update=True)
        if row is not None and row.state == "received":
            row.state, row.applied_at = state, datetime.now(UTC)
    return state
