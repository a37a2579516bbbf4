"""Provider webhook endpoints: `POST /webhooks/stripe` and `POST /webhooks/paypal`.

Each verifies the provider's signature first (Stripe: `Stripe-Signature`, HMAC-SHA256, 300 s tolerance, secret
STRIPE_WEBHOOK_SECRET, computed locally; PayPal: its verify-webhook-signature call with PAYPAL_WEBHOOK_ID), answers
400 and changes nothing when it fails, records the event once (billing.provider_events; a replay is acknowledged
and ignored) and hands it to the worker (the `process_provider_event` actor). The answer does not wait for the
processing: the Stripe endpoint makes no provider call, one database insert and one broker push (both in a worker
thread, off the event loop), well inside Stripe's expectation of a quick 2xx (our target: 100 ms; measured in
benchmarks/test_bench_webhooks.py). On SQLite the inserts of concurrent deliveries take turns on a lock in this
process rather than in SQLite's busy handler, whose sleeps (up to 100 ms each) made a burst's slowest answers
last close to a second. When the broker is away the event is still recorded and the worker's round applies it
(billing_worker.payments).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import orjson
import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing.provider_events import Recorded, record

log = logging.getLogger("aihub.webhooks")
MAX_BODY = 1024 * 1024


def _error(status: int, message: str, code: str) -> Response:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}}, status_code=status)


async def _body(request: Request) -> bytes | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body


class Webhooks:
    """`store()` gives the system of record (billing.store.Store, opened once, lazily); `enqueue(event_id)` hands
    an event to the worker (default: the Dramatiq actor)."""

    def __init__(self, store: Callable[[], Any], enqueue: Callable[[int], None] | None = None,
                 stripe_secret: str | None = None, paypal: Any = None) -> None:
        self.store = store
        self.enqueue = enqueue or _send_to_worker
        self.stripe_secret = stripe_secret if stripe_secret is not None else os.environ.get("STRIPE_WEBHOOK_SECRET")
        self.paypal = paypal
        self._sqlite_turns = threading.Lock()     # SQLite: one insert at a time (module docstring)
        self._sqlite: bool | None = None

    def routes(self) -> list[Route]:
        return [Route("/webhooks/stripe", self.stripe, methods=["POST"]),
                Route("/webhooks/paypal", self.paypal_endpoint, methods=["POST"])]

    async def _accept(self, provider: str, event_id: str, event_type: str, payload: dict[str, Any]) -> Response:
        recorded = await asyncio.to_thread(self._record_and_hand_off, provider, event_id, event_type, payload)
        return JSONResponse({"received": True, "duplicate": recorded.duplicate})

    def _record_and_hand_off(self, provider: str, event_id: str, event_type: str,
                             payload: dict[str, Any]) -> Recorded:
        """Records the event once and hands a new one to the worker (in a thread: both block)."""
        sessions = self.store().accounts.sessions
        if self._sqlite is None:
            with sessions() as session:
                self._sqlite = session.get_bind().dialect.name == "sqlite"
        if self._sqlite:
            with self._sqlite_turns:
                recorded = record(sessions, provider, event_id, event_type, payload)
        else:
            recorded = record(sessions, provider, event_id, event_type, payload)
        if recorded.event_id is not None:
            try:
                self.enqueue(recorded.event_id)
            except Exception:       # the broker is away: the worker's sweep picks recorded events up
                log.warning("could not enqueue %s event %s", provider, event_id, exc_info=True)
        return recorded

    async def stripe(self, request: Request) -> Response:
        if not self.stripe_secret:
            return _error(503, "Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET).", "not_configured")
        body = await _body(request)
        if body is None:
            return _error(413, "Webhook body too large.", "request_too_large")
        try:
            stripe.WebhookSignature.verify_header(body.decode("utf-8"), request.headers.get("stripe-signature", ""),
                                                  self.stripe_secret, tolerance=300)
            payload = orjson.loads(body)
        except (stripe.SignatureVerificationError, ValueError) as exc:
            return _error(400, f"Webhook signature verification failed: {type(exc).__name__}.", "bad_signature")
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str) \
                or not isinstance(payload.get("type"), str):
            return _error(400, "A Stripe event has a string id and type.", "bad_event")
        return await self._accept("stripe", payload["id"], payload["type"], stripe_summary(payload))

    async def paypal_endpoint(self, request: Request) -> Response:
        if self.paypal is None:
            return _error(503, "PayPal webhooks are not configured.", "not_configured")
        body = await _body(request)
        if body is None:
            return _error(413, "Webhook body too large.", "request_too_large")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "The webhook body is not JSON.", "bad_body")
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = await asyncio.to_thread(self.paypal.verify_webhook, headers, body)
        if not verified or not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            return _error(400, "Webhook signature verification failed.", "bad_signature")
        return await self._accept("paypal", str(payload["id"]), str(payload.get("event_type", "")), payload)


def stripe_summary(event: dict[str, Any]) -> dict[str, Any]:
    """What we keep of a Stripe event: the object's id, status, metadata and error, not the customer's details
    (names, emails, customer ids stay at Stripe)."""
    obj = event.get("data", {}).get("object", {}) if isinstance(event.get("data"), dict) else {}
    obj = obj if isinstance(obj, dict) else {}
    kept = {k: obj[k] for k in ("id", "object", "status", "amount", "currency", "metadata") if k in obj}
    error = obj.get("last_payment_error")
    if isinstance(error, dict):
        kept["last_payment_error"] = {k: error[k] for k in ("code", "decline_code", "message") if k in error}
    return {"id": event.get("id"), "type": event.get("type"), "created": event.get("created"),
            "data": {"object": kept}}


def _send_to_worker(event_id: int) -> None:
    from billing_worker.actors import process_provider_event
    process_provider_event.send(event_id)
