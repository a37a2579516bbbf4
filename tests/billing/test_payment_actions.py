"""A card that needs authentication (3-D Secure), against a real localstripe: the attempt is `requires_action` with
its client secret kept encrypted and a confirmation link, the customer is told what to do, it counts as a failed
attempt for dunning, it does not block the next attempt, and whichever way the invoice is paid (the customer
authenticating, then a webhook or the payments round; or a retry with another card) it is paid once."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import redis
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import Dunning, Notification, Payment
from billing.dunning import Dunner
from billing.errors import Conflict
from billing.invoicing import Invoicer
from billing.notifications import render_email
from billing.payments.service import PaymentService
from tests.billing.conftest import KEY, ApiThread
from tests.billing.test_dunning import DAY, plan_in_redis, urllib_request
from tests.billing.test_payments_stripe import (
    NEEDS_3DS,
    VISA,
    card,
    customer_of,
    intents_of,
    open_invoice,
    raw_dump,
)
from tests.quota.conftest import PinnedClock

CONFIRM = "https://billing.example.com/pay/{invoice}"


def authenticate(localstripe: str, intent_id: str, client_secret: str, success: bool = True) -> int:
    """The customer completes (or fails) 3-D Secure in their browser: localstripe's test endpoint."""
    form = urllib.parse.urlencode({"client_secret": client_secret, "success": "true" if success else "false"})
    request = urllib.request.Request(f"{localstripe}/v1/payment_intents/{intent_id}/_authenticate",
                                     data=form.encode(), headers={"Authorization": f"Bearer {KEY}"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def notifications(db: sessionmaker[Session], account: str) -> list[Notification]:
    with db() as session:
        return list(session.scalars(select(Notification).where(Notification.account_id == account)
                                    .order_by(Notification.id)))


def states(payments: PaymentService, number: str) -> list[tuple[int, str]]:
    return [(a["attempt"], a["state"]) for a in payments.attempts(number)]


def wait_until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_authentication_required_is_dunned_and_a_webhook_settles_it_once(
        webhook_api: tuple[ApiThread, list[str]], localstripe: str, payments: PaymentService,
        service: AccountService, invoicer: Invoicer, stripe_client: stripe.StripeClient, db: sessionmaker[Session],
        r: redis.Redis, catalog: Any) -> None:
    api, applied = webhook_api
    assert urllib_request(f"{localstripe}/_config/webhooks/aihub",
                          {"url": f"{api.url}/webhooks/stripe", "secret": "whsec_test_secret"}) == 200
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    payments.action_url = CONFIRM
    account, number = open_invoice(service, invoicer)
    service.set_webhook(account, "https://hooks.example.com/aihub")
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    dunner = Dunner(db, payments, service, catalog, (1, 3, 5, 7), clock=clock)
    payments.on_paid.append(dunner.settled)

    # Collection: the card needs 3-D Secure. A failed attempt for dunning, kept with what the customer needs.
    assert dunner.collect() == {"charged": 0, "failed": 1, "overdue": 0}
    [first] = payments.attempts(number)
    assert (first["state"], first["failure_code"], first["action_required"]) == (
        "requires_action", "authentication_required", True)
    assert first["action_url"] == f"https://billing.example.com/pay/{number}"
    assert "client_secret" not in first                                   # never in a view
    action = payments.pending_action(number)
    intent = stripe_client.v1.payment_intents.retrieve(first["provider_payment_id"])
    assert action["client_secret"] == intent.client_secret and action["client_secret"].startswith("pi_")
    dump = raw_dump(db)
    assert intent.client_secret not in dump and "_secret_" not in dump     # encrypted at rest

    # The customer is told what to do: confirm the payment at the link (never the secret itself).
    [told] = notifications(db, account)
    assert (told.kind, told.dedup_key) == ("payment_action_required", f"payment_action_required:{number}:0")
    assert told.payload["action_url"] == f"https://billing.example.com/pay/{number}"
    subject, body = render_email(told.kind, told.payload, "en", "Payer")
    assert number in subject and f"https://billing.example.com/pay/{number}" in body and "confirm" in body
    assert intent.client_secret not in str(told.payload)

    # Dunning goes on: each retry cancels the attempt awaiting the customer and starts the next one.
    started = clock()
    for day, step in ((1, 1), (3, 2), (5, 3)):
        clock.now = started + day * DAY
        assert dunner.run() == {"recovered": 0, "retried": 1, "reminded": 0, "exhausted": 0}, day
        assert states(payments, number)[-2:] == [(step, "failed"), (step + 1, "requires_action")]
    assert stripe_client.v1.payment_intents.retrieve(first["provider_payment_id"]).status == "canceled"
    assert authenticate(localstripe, intent.id, intent.client_secret) == 400   # too late: it cannot be paid
    clock.now = started + 7 * DAY
    assert dunner.run()["exhausted"] == 1
    assert plan_in_redis(r, account) == "free"                             # Pro's consequence
    assert [n.dedup_key for n in notifications(db, account)] == [
        f"payment_action_required:{number}:{n}" for n in range(5)]

    # The customer authenticates the last attempt: Stripe's payment_intent.succeeded pays the invoice, once.
    last = payments.pending_action(number)
    assert authenticate(localstripe, last["provider_payment_id"], last["client_secret"]) == 200
    wait_until(lambda: "applied" in applied, f"payment_intent.succeeded applied ({applied})")
    assert invoicer.get(number)["status"] == "paid"
    assert plan_in_redis(r, account) == "pro"                              # restored at once
    assert notifications(db, account)[-1].dedup_key == f"payment_recovered:{number}"
    assert states(payments, number) == [(1, "failed"), (2, "failed"), (3, "failed"), (4, "failed"),
                                        (5, "succeeded")]
    intents = intents_of(stripe_client, customer_of(db, account))
    assert sorted(pi.status for pi in intents) == ["canceled"] * 4 + ["succeeded"]
    assert payments.charge_invoice(number)["state"] == "succeeded"         # nothing charged again
    with db() as session:
        assert session.scalars(select(Payment.client_secret).where(Payment.client_secret.is_not(None))).all() == []
        assert session.get(Dunning, session.scalars(select(Dunning.invoice_id)).one()).state == "recovered"
    with pytest.raises(Conflict) as nothing:
        payments.pending_action(number)
    assert nothing.value.code == "no_action_required"


def test_a_retry_with_another_card_pays_and_the_old_attempt_cannot(
        localstripe: str, payments: PaymentService, service: AccountService, invoicer: Invoicer,
        stripe_client: stripe.StripeClient, db: sessionmaker[Session], catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    waiting = payments.charge_invoice(number)                              # `aihub invoice pay`
    assert waiting["state"] == "requires_action" and waiting["action_url"] is None
    secret = payments.pending_action(number)["client_secret"]
    dunner = Dunner(db, payments, service, catalog, (1, 3), clock=clock)
    assert dunner.collect() == {"charged": 0, "failed": 1, "overdue": 0}   # it enters dunning
    [told] = notifications(db, account)
    assert told.kind == "payment_action_required" and "another payment method" in told.payload["action"]

    payments.add_payment_method(account, card(stripe_client, VISA))        # the customer switches cards
    clock.now += DAY
    assert dunner.run() == {"recovered": 1, "retried": 0, "reminded": 0, "exhausted": 0}
    assert invoicer.get(number)["status"] == "paid"
    assert states(payments, number) == [(1, "failed"), (2, "succeeded")]
    assert payments.attempts(number)[0]["failure_code"] == "authentication_required"
    assert authenticate(localstripe, waiting["provider_payment_id"], secret) == 400   # cancelled before attempt 2
    assert sorted(pi.status for pi in intents_of(stripe_client, customer_of(db, account))) == [
        "canceled", "succeeded"]


def test_authenticated_before_the_retry_is_found_and_nothing_more_is_charged(
        localstripe: str, payments: PaymentService, service: AccountService, invoicer: Invoicer,
        stripe_client: stripe.StripeClient, db: sessionmaker[Session], catalog: Any) -> None:
    """No webhook arrives (lost): the retry's cancellation finds the intent paid and records it."""
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    dunner = Dunner(db, payments, service, catalog, (1, 3), clock=clock)
    dunner.collect()
    action = payments.pending_action(number)
    assert authenticate(localstripe, action["provider_payment_id"], action["client_secret"]) == 200
    clock.now += DAY
    assert dunner.run()["recovered"] == 1
    assert states(payments, number) == [(1, "succeeded")] and invoicer.get(number)["status"] == "paid"
    assert [pi.status for pi in intents_of(stripe_client, customer_of(db, account))] == ["succeeded"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_payments_round_finds_an_authenticated_attempt(
        localstripe: str, payments: PaymentService, service: AccountService, invoicer: Invoicer,
        stripe_client: stripe.StripeClient) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    payments.charge_invoice(number)
    assert payments.reconcile() == {"settled": 0, "not_received": 0, "unreachable": 0}
    clock.now += 11 * 60
    assert payments.reconcile() == {"settled": 0, "not_received": 0, "unreachable": 0}   # still waiting
    action = payments.pending_action(number)
    assert authenticate(localstripe, action["provider_payment_id"], action["client_secret"]) == 200
    assert payments.reconcile() == {"settled": 1, "not_received": 0, "unreachable": 0}
    assert invoicer.get(number)["status"] == "paid" and states(payments, number) == [(1, "succeeded")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_stripes_payment_failed_for_authentication_keeps_the_attempt_awaiting_the_customer(
        payments: PaymentService, service: AccountService, invoicer: Invoicer, stripe_client: stripe.StripeClient,
        db: sessionmaker[Session]) -> None:
    """Off-session, Stripe answers a 3-D Secure card with an authentication_required error *and* sends
    payment_intent.payment_failed: the intent can still be confirmed, so the attempt stays the live one (to be
    cancelled before any new attempt) with its client secret."""
    from api.webhooks import stripe_summary
    from billing.provider_events import apply, record
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    waiting = payments.charge_invoice(number)
    event = {"id": "evt_auth_failed", "type": "payment_intent.payment_failed", "created": 1, "data": {"object": {
        "id": waiting["provider_payment_id"], "object": "payment_intent", "status": "requires_payment_method",
        "last_payment_error": {"code": "authentication_required", "message": "This payment requires authentication."},
        "metadata": {"attempt": waiting["idempotency_key"], "account": account}}}}
    recorded = record(db, "stripe", event["id"], event["type"], stripe_summary(event))
    assert recorded.event_id is not None and apply(db, recorded.event_id, payments) == "applied"
    [attempt] = payments.attempts(number)
    assert (attempt["state"], attempt["failure_code"]) == ("requires_action", "authentication_required")
    assert payments.pending_action(number)["client_secret"]              # still there for the customer


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bank_transfer_marked_paid_cancels_the_attempt_awaiting_the_customer(
        localstripe: str, payments: PaymentService, service: AccountService, invoicer: Invoicer,
        stripe_client: stripe.StripeClient) -> None:
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    waiting = payments.charge_invoice(number)
    secret = payments.pending_action(number)["client_secret"]
    assert payments.mark_paid_by_bank_transfer(number, "SEPA-3DS-1")["state"] == "succeeded"
    assert invoicer.get(number)["status"] == "paid"
    assert states(payments, number) == [(1, "failed"), (2, "succeeded")]
    assert authenticate(localstripe, waiting["provider_payment_id"], secret) == 400    # can no longer be paid
