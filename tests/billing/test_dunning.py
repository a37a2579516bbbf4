"""Failed payments over a pinned clock against a real localstripe: collection, retries on days 1, 3, 5 and 7 with a
notification at each, the plan's consequence, and the plan restored at once by a later success; provider webhooks
signed by localstripe itself; a paid plan needs a payment method."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
import redis
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from api.webhooks import Webhooks
from billing.accounts import AccountService
from billing.db.models import Dunning, Notification, Payment, ProviderEvent
from billing.dunning import Dunner
from billing.errors import InvalidInput
from billing.invoicing import Invoicer
from billing.payments.service import PaymentService
from billing.provider_events import apply
from gateway.keys import AccountKeys
from tests.billing.conftest import KEY, ApiThread
from tests.billing.test_payments_stripe import CHARGE_FAILS, VISA, card, open_invoice
from tests.quota.conftest import PinnedClock

DAY = 86400.0


def plan_in_redis(r: redis.Redis, account: str) -> str:
    return str(r.hget(AccountKeys(account, 16).account, "plan").decode())


def kinds(db: sessionmaker[Session], account: str) -> list[str]:
    with db() as session:
        return [n.dedup_key for n in session.scalars(select(Notification).where(Notification.account_id == account)
                                                     .order_by(Notification.id))]


def test_dunning_retries_suspends_and_restores(payments: PaymentService, service: AccountService,
                                               invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                               db: sessionmaker[Session], r: redis.Redis, catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, CHARGE_FAILS))
    dunner = Dunner(db, payments, service, catalog, (1, 3, 5, 7), clock=clock)
    assert dunner.collect() == {"charged": 0, "failed": 1, "overdue": 0}
    assert dunner.collect() == {"charged": 0, "failed": 0, "overdue": 0}   # charged once: dunning from here on
    started = clock()
    for day, retried in ((0.5, 0), (1, 1), (2, 0), (3, 1), (5, 1)):
        clock.now = started + day * DAY
        assert dunner.run()["retried"] == retried, day
    assert plan_in_redis(r, account) == "pro"
    clock.now = started + 7 * DAY
    assert dunner.run() == {"recovered": 0, "retried": 0, "reminded": 0, "exhausted": 1}
    assert plan_in_redis(r, account) == "free"                              # Pro's consequence: free limits
    assert service.get_account(account)["subscription"]["plan"] == "pro"   # the subscription itself is kept
    assert kinds(db, account) == [f"payment_failed:{number}:{n}" for n in range(5)]
    with db() as session:
        assert [p.state for p in session.scalars(select(Payment).order_by(Payment.id))] == ["failed"] * 5

    payments.add_payment_method(account, card(stripe_client, VISA))        # the customer fixes the card, pays
    assert payments.charge_invoice(number)["state"] == "succeeded"
    assert dunner.run()["recovered"] == 1
    assert plan_in_redis(r, account) == "pro"                               # restored at once
    assert kinds(db, account)[-1] == f"payment_recovered:{number}"
    with db() as session:
        assert session.get(Dunning, session.scalars(select(Dunning.invoice_id)).one()).state == "recovered"
    from billing.reports import revenue_report
    from tests.quota.conftest import YEAR
    [december] = revenue_report(db, catalog, f"{YEAR}-12", f"{YEAR}-12")
    assert december.payments == {"attempts": 6, "succeeded": 1, "failed": 5, "success_rate_pct": "16.67"}


def test_a_retry_that_succeeds_restores_nothing_it_did_not_take(payments: PaymentService, service: AccountService,
                                                                invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                                                db: sessionmaker[Session], catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, CHARGE_FAILS))
    dunner = Dunner(db, payments, service, catalog, (1, 3), clock=clock)
    dunner.collect()
    payments.add_payment_method(account, card(stripe_client, VISA))
    clock.now += DAY
    assert dunner.run() == {"recovered": 1, "retried": 0, "reminded": 0, "exhausted": 0}
    assert invoicer.get(number)["status"] == "paid"


def test_enterprise_debts_become_uncollectible(payments: PaymentService, service: AccountService,
                                               invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                               db: sessionmaker[Session], catalog: Any, r: redis.Redis) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    service.set_plan(account, "enterprise")
    payments.add_payment_method(account, card(stripe_client, CHARGE_FAILS))
    dunner = Dunner(db, payments, service, catalog, (1,), clock=clock)
    dunner.collect()
    clock.now += DAY
    assert dunner.run()["exhausted"] == 1
    assert invoicer.get(number)["status"] == "uncollectible" and plan_in_redis(r, account) == "enterprise"


def test_an_upgrade_to_a_paid_plan_needs_a_payment_method(payments: PaymentService, service: AccountService,
                                                          stripe_client: stripe.StripeClient) -> None:
    service.require_payment_method = True
    account = str(service.create_account("Upgrader", "free", country="JP").account["id"])
    with pytest.raises(InvalidInput) as refused:
        service.set_plan(account, "pro")
    assert refused.value.code == "payment_method_required"
    payments.enable_bank_transfer(account)
    assert service.set_plan(account, "pro").account["subscription"]["plan"] == "pro"
    service.set_plan(account, "free")                                        # a downgrade needs none


# -- provider webhooks ---------------------------------------------------------------------------------------------

def post(url: str, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/json", **({"Stripe-Signature": signature} if signature else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def signed(body: bytes, secret: str, at: int) -> str:
    return f"t={at},v1={hmac.new(secret.encode(), f'{at}.'.encode() + body, hashlib.sha256).hexdigest()}"


def test_localstripe_webhooks_settle_an_attempt_whose_outcome_was_lost(
        webhook_api: tuple[ApiThread, list[str]], localstripe: str, payments: PaymentService,
        service: AccountService, invoicer: Invoicer, stripe_client: stripe.StripeClient,
        db: sessionmaker[Session]) -> None:
    api, applied = webhook_api
    request = urllib_request(f"{localstripe}/_config/webhooks/aihub",
                             {"url": f"{api.url}/webhooks/stripe", "secret": "whsec_test_secret"})
    assert request == 200
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, VISA))
    prepared = payments._start_attempt(number)            # the worker dies right after the provider call:
    assert not isinstance(prepared, dict)
    attempt, provider, view, customer, method = prepared
    provider.charge(view, customer, method, attempt.idempotency_key)   # charged, outcome never recorded
    assert invoicer.get(number)["status"] == "open"
    deadline = time.monotonic() + 15
    while "applied" not in applied:                      # localstripe signs and sends payment_intent.succeeded
        assert time.monotonic() < deadline, applied
        time.sleep(0.1)
    assert invoicer.get(number)["status"] == "paid"
    with db() as session:
        assert session.get(Payment, attempt.id).state == "succeeded"


def test_forged_expired_and_replayed_webhooks_change_nothing(webhook_api: tuple[ApiThread, list[str]],
                                                             db: sessionmaker[Session]) -> None:
    api, applied = webhook_api
    url = f"{api.url}/webhooks/stripe"
    body = json.dumps({"id": "evt_test_1", "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": "pi_nothing", "object": "payment_intent"}}}).encode()
    now = int(time.time())
    assert post(url, body, None)[0] == 400
    assert post(url, body, signed(body, "whsec_wrong", now))[0] == 400
    assert post(url, body, signed(body, "whsec_test_secret", now - 400))[0] == 400      # past the 300 s tolerance
    assert post(url, body.replace(b"pi_nothing", b"pi_other"), signed(body, "whsec_test_secret", now))[0] == 400
    with db() as session:
        assert session.scalars(select(ProviderEvent)).all() == []
    assert post(url, body, signed(body, "whsec_test_secret", now)) == (200, {"received": True, "duplicate": False})
    assert post(url, body, signed(body, "whsec_test_secret", now)) == (200, {"received": True, "duplicate": True})
    with db() as session:
        [event] = session.scalars(select(ProviderEvent)).all()
        assert event.state == "ignored"                  # no payment pi_nothing: nothing to change
    assert applied == ["ignored"]


def urllib_request(url: str, form: dict[str, str]) -> int:
    import urllib.parse
    import urllib.request
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {KEY}"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_paypal_webhooks_are_verified_by_paypal_before_they_are_recorded(db: sessionmaker[Session],
                                                                         payments: PaymentService) -> None:
    from billing.payments.paypal_provider import PayPalProvider, PayPalSettings
    from fakes.paypal.server import FakePayPal
    with FakePayPal() as fake:
        provider = PayPalProvider(PayPalSettings(fake.client_id, fake.client_secret, fake.url))
        applied: list[str] = []

        class Store:
            class accounts:
                sessions = db
        hooks = Webhooks(lambda: Store, enqueue=lambda event_id: applied.append(apply(db, event_id, payments)),
                         paypal=provider, stripe_secret="")
        with ApiThread(Starlette(routes=hooks.routes())) as api:
            webhook_id = fake.add_webhook(f"{api.url}/webhooks/paypal")
            provider.settings = PayPalSettings(fake.client_id, fake.client_secret, fake.url,  # its webhook id, now
                                               webhook_id=webhook_id)
            event = fake.send_event("PAYMENT.CAPTURE.COMPLETED", "capture", {"id": "CAP-1", "status": "COMPLETED"})
            deadline = time.monotonic() + 10
            while not applied:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            headers, body = fake.sign_event(webhook_id, event)
            forged = body.replace(b"CAP-1", b"CAP-2")
            status, _ = post_raw(f"{api.url}/webhooks/paypal", forged, headers)
            assert status == 400
            assert post_raw(f"{api.url}/webhooks/paypal", body, headers)[1] == {"received": True, "duplicate": True}
    with db() as session:
        assert [e.provider_event_id for e in session.scalars(select(ProviderEvent))] == [event["id"]]


def post_raw(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, data=body, headers={**headers, "Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_signed_but_malformed_stripe_events_are_400(webhook_api: tuple[ApiThread, list[str]],
                                                    db: sessionmaker[Session]) -> None:
    api, _ = webhook_api
    now = int(time.time())
    for body in (b"[1, 2]", b'{"type": "x"}', b'{"id": null, "type": "x"}', b"\xff\xfe"):
        status, _ = post(f"{api.url}/webhooks/stripe", body, signed(body, "whsec_test_secret", now)) \
            if body != b"\xff\xfe" else (400, {})
        assert status == 400, body
    with db() as session:
        assert session.scalars(select(ProviderEvent)).all() == []


def test_a_failed_manual_charge_enters_dunning_and_a_payment_restores_at_once(
        payments: PaymentService, service: AccountService, invoicer: Invoicer, stripe_client: stripe.StripeClient,
        db: sessionmaker[Session], r: redis.Redis, catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, CHARGE_FAILS))
    dunner = Dunner(db, payments, service, catalog, (1,), clock=clock)
    payments.on_paid.append(dunner.settled)
    assert payments.charge_invoice(number)["state"] == "failed"          # `aihub invoice pay`, declined
    assert dunner.collect() == {"charged": 0, "failed": 1, "overdue": 0}   # it enters dunning all the same
    clock.now += DAY
    assert dunner.run()["exhausted"] == 1 and plan_in_redis(r, account) == "free"
    payments.add_payment_method(account, card(stripe_client, VISA))
    assert payments.charge_invoice(number)["state"] == "succeeded"
    assert plan_in_redis(r, account) == "pro"                            # at once, not at the next round


def test_an_attempt_whose_answer_was_lost_is_settled_by_asking_stripe(
        payments: PaymentService, service: AccountService, invoicer: Invoicer, stripe_client: stripe.StripeClient,
        db: sessionmaker[Session], catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    charged, charged_number = open_invoice(service, invoicer)
    payments.add_payment_method(charged, card(stripe_client, VISA))
    prepared = payments._start_attempt(charged_number)      # Stripe charged it, the answer never came back
    assert not isinstance(prepared, dict)
    attempt, provider, view, customer, method = prepared
    provider.charge(view, customer, method, attempt.idempotency_key)
    lost, lost_number = open_invoice(service, invoicer)
    payments.add_payment_method(lost, card(stripe_client, VISA))
    assert not isinstance(payments._start_attempt(lost_number), dict)   # Stripe never received this one
    assert payments.reconcile() == {"settled": 0, "not_received": 0, "unreachable": 0}   # too recent to judge
    clock.now += 11 * 60
    assert payments.reconcile() == {"settled": 1, "not_received": 1, "unreachable": 0}
    assert invoicer.get(charged_number)["status"] == "paid"
    assert payments.attempts(lost_number)[-1]["failure_code"] == "not_received"
    dunner = Dunner(db, payments, service, catalog, (1,), clock=clock)
    assert dunner.collect()["failed"] == 1                           # collection goes on through dunning
    clock.now += DAY
    assert dunner.run()["recovered"] == 1 and invoicer.get(lost_number)["status"] == "paid"


# -- bank transfer -------------------------------------------------------------------------------------------------

def test_bank_transfer_overdue_invoices_are_reminded_then_suspended(
        payments: PaymentService, service: AccountService, invoicer: Invoicer, db: sessionmaker[Session],
        r: redis.Redis, catalog: Any) -> None:
    from billing.notifications import render_email
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.enable_bank_transfer(account)
    dunner = Dunner(db, payments, service, catalog, (1, 3, 5, 7), clock=clock)
    payments.on_paid.append(dunner.settled)
    assert dunner.collect() == {"charged": 0, "failed": 0, "overdue": 0}    # not due yet: nothing to remind
    due = invoicer.get(number)["due_at"]
    clock.set(due.removesuffix("Z"))
    clock.advance(3600)
    assert dunner.collect() == {"charged": 0, "failed": 0, "overdue": 1}
    assert dunner.collect() == {"charged": 0, "failed": 0, "overdue": 0}    # once
    started = clock()
    for day, reminded in ((0.5, 0), (1, 1), (2, 0), (3, 1), (5, 1)):
        clock.now = started + day * DAY
        assert dunner.run()["reminded"] == reminded, day
    assert plan_in_redis(r, account) == "pro"
    clock.now = started + 7 * DAY
    assert dunner.run() == {"recovered": 0, "retried": 0, "reminded": 0, "exhausted": 1}
    assert plan_in_redis(r, account) == "free"                              # the same consequence as a card's
    assert kinds(db, account) == [f"payment_reminder:{number}:{n}" for n in range(5)]
    with db() as session:
        assert session.scalars(select(Payment)).all() == []                 # never a charge attempt
        reminders = list(session.scalars(select(Notification).where(Notification.account_id == account)
                                         .order_by(Notification.id)))
    subject, body = render_email("payment_reminder", reminders[0].payload, "en", "Payer")
    assert number in subject and f"reference {number}" in body and due[:10] in body and "USD 29.00" in body
    assert "again on" in reminders[0].payload["next"]
    assert "last reminder" in reminders[-1].payload["next"] and "free plan" in reminders[-1].payload["next"]

    payments.mark_paid_by_bank_transfer(number, "SEPA-2026-12-24")          # the transfer arrives
    assert plan_in_redis(r, account) == "pro"                               # restored at once
    assert kinds(db, account)[-1] == f"payment_recovered:{number}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bank_transfer_enterprise_debts_become_uncollectible(
        payments: PaymentService, service: AccountService, invoicer: Invoicer, db: sessionmaker[Session],
        r: redis.Redis, catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    service.set_plan(account, "enterprise")
    payments.enable_bank_transfer(account)
    dunner = Dunner(db, payments, service, catalog, (1,), clock=clock)
    clock.set(invoicer.get(number)["due_at"].removesuffix("Z"))
    assert dunner.collect()["overdue"] == 1
    clock.now += DAY
    assert dunner.run()["exhausted"] == 1
    assert invoicer.get(number)["status"] == "uncollectible" and plan_in_redis(r, account) == "enterprise"
    payments.mark_paid_by_bank_transfer(number, "LATE-1")
    assert invoicer.get(number)["status"] == "paid"
