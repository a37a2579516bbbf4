"""The Stripe webhook endpoint only verifies, records and hands off: no provider call (no network at all) and no
payment change during the request; the worker applies the event afterwards. (Its answer time is measured in
benchmarks/test_bench_webhooks.py, not here.)"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.testclient import TestClient

from api.webhooks import Webhooks
from billing.accounts import AccountService
from billing.db.models import Payment, ProviderEvent
from billing.invoicing import Invoicer
from billing.payments.service import PaymentService
from billing.provider_events import apply
from tests.billing.test_payments_stripe import VISA, card, open_invoice

SECRET = "whsec_handoff_secret"


def signed(body: bytes, at: int | None = None) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    mac = hmac.new(SECRET.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={at},v1={mac}", "Content-Type": "application/json"}


class NoNetwork:
    """Records every outbound connection attempted while active (and refuses it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[Any] = []
        self.monkeypatch = monkeypatch

    def __enter__(self) -> NoNetwork:
        def refuse(sock: socket.socket, address: Any) -> None:
            self.attempts.append(address)
            raise OSError("no network during the webhook request")
        self.monkeypatch.setattr(socket.socket, "connect", refuse)
        self.monkeypatch.setattr(socket.socket, "connect_ex", refuse)
        return self

    def __exit__(self, *_: Any) -> None:
        self.monkeypatch.undo()


@pytest.fixture
def endpoint(db: sessionmaker[Session]) -> Iterator[tuple[TestClient, list[int]]]:
    handed: list[int] = []

    class Store:
        class accounts:
            sessions = db

    hooks = Webhooks(lambda: Store, enqueue=handed.append, stripe_secret=SECRET)
    with TestClient(Starlette(routes=hooks.routes())) as client:
        yield client, handed


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_signed_event_is_recorded_and_handed_off_only(endpoint: tuple[TestClient, list[int]],
                                                        payments: PaymentService, service: AccountService,
                                                        invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                                        db: sessionmaker[Session],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client, handed = endpoint
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, VISA))
    prepared = payments._start_attempt(number)              # charged at Stripe, our record still processing
    assert not isinstance(prepared, dict)
    attempt, provider, view, customer, method = prepared
    intent = provider.charge(view, customer, method, attempt.idempotency_key).provider_id
    event = {"id": "evt_handoff_1", "object": "event", "type": "payment_intent.succeeded", "created": 1,
             "data": {"object": {"id": intent, "object": "payment_intent", "status": "succeeded", "amount": 2900,
                                 "currency": "usd", "customer": customer, "receipt_email": "payer@example.com",
                                 "metadata": {"attempt": attempt.idempotency_key, "account": account}}}}
    body = json.dumps(event).encode()

    with NoNetwork(monkeypatch) as guard:
        response = client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert (response.status_code, response.json()) == (200, {"received": True, "duplicate": False})
    assert guard.attempts == []                               # no call to Stripe (or anything) in the request
    with db() as session:
        [stored] = session.scalars(select(ProviderEvent)).all()
        assert (stored.provider_event_id, stored.type, stored.state) == ("evt_handoff_1",
                                                                        "payment_intent.succeeded", "received")
        assert "receipt_email" not in json.dumps(stored.payload) and customer not in json.dumps(stored.payload)
        assert session.get(Payment, attempt.id).state == "processing"      # not applied in the request
    assert handed == [stored.id]                              # handed to the worker, once

    with NoNetwork(monkeypatch) as guard:                     # a replay: acknowledged, not handed off again
        again = client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert again.json() == {"received": True, "duplicate": True} and guard.attempts == [] and handed == [stored.id]

    assert apply(db, stored.id, payments) == "applied"       # what the worker does with it
    assert invoicer.get(number)["status"] == "paid"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_event_is_kept_when_the_broker_is_away(db: sessionmaker[Session]) -> None:
    class Store:
        class accounts:
            sessions = db

    def broker_down(event_id: int) -> None:
        raise ConnectionError("broker unreachable")

    hooks = Webhooks(lambda: Store, enqueue=broker_down, stripe_secret=SECRET)
    body = json.dumps({"id": "evt_handoff_2", "type": "payment_intent.processing",
                       "data": {"object": {"id": "pi_x"}}}).encode()
    with TestClient(Starlette(routes=hooks.routes())) as client:
        response = client.post("/webhooks/stripe", content=body, headers=signed(body))
        assert response.status_code == 200
        assert client.post("/webhooks/stripe", content=body, headers=signed(body, int(time.time()) - 301)) \
            .status_code == 400                               # outside the tolerance: refused
    from billing.provider_events import pending
    assert len(pending(db)) == 1                              # the worker's round picks it up
