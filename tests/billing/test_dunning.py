"""Failed payments over a pinned clock against a real localstripe: collection, retries on days 1, 3, 5 and 7 with a
notification at each, the plan's consequence, and the plan restored at once by a later success; provider webhooks
signed by localstripe itself; a paid plan needs a payment method."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime, timedelta
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
from tests.billing.test_invoices import PERIOD
from tests.billing.test_payments_stripe import CHARGE_FAILS, NEEDS_3DS, VISA, card, open_invoice
from tests.quota.conftest import YEAR, PinnedClock

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


# -- the dunning emails in the account's language ----------------------------------------------------------------

FOOTER_EN = "\n\n-- AI Hub\n(This message was sent automatically.)"
FOOTER_ZH = "\n\n—— AI Hub\n（此邮件由系统自动发送。）"
SUSPEND_EN = "Until it is paid, your plan is limited to the free plan's limits."
UNCOLLECTIBLE_EN = "The invoice is now marked uncollectible; paying it still settles it."
ENGLISH_RUN = re.compile(r"[A-Za-z']+[,;:.!?]?[ \t]+[A-Za-z']+[,;:.!?]?[ \t]+[A-Za-z']+")


def english_runs(text: str) -> list[str]:
    """Runs of 3+ English words (a sentence); URLs left out (invoice numbers, dates, amounts never match)."""
    return ENGLISH_RUN.findall(re.sub(r"https?://\S+", "", text))


def emails(db: sessionmaker[Session], account: str) -> list[tuple[Notification, str, str]]:
    """Each notification of the account with its English email body and its Chinese subject and body."""
    from billing.notifications import render_email
    with db() as session:
        told = list(session.scalars(select(Notification).where(Notification.account_id == account)
                                    .order_by(Notification.id)))
    return [(n, render_email(n.kind, n.payload, "en", "Payer")[1], "\n".join(render_email(n.kind, n.payload, "zh-CN",
                                                                                           "Payer")))
            for n in told]


def _card_dunning_emails(service: AccountService, invoicer: Invoicer, payments: PaymentService,
                         stripe_client: stripe.StripeClient, db: sessionmaker[Session], catalog: Any, card_number: str,
                         plan: str | None = None) -> tuple[str, list[tuple[Notification, str, str]]]:
    """An open invoice (the clock on {YEAR}-12-02T09:00) of an account paying by `card_number`, dunned with one
    retry a day later until exhausted: the invoice number and the account's emails (`emails`)."""
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    if plan is not None:
        service.set_plan(account, plan)
    payments.add_payment_method(account, card(stripe_client, card_number))
    dunner = Dunner(db, payments, service, catalog, (1,), clock=clock)
    dunner.collect()
    clock.now += DAY
    assert dunner.run()["exhausted"] == 1
    return number, emails(db, account)


def test_english_runs_are_found() -> None:
    assert english_runs("扣款失败：Your card was declined.。") == ["Your card was"]
    assert english_runs("请在此确认付款：https://billing.example.com/pay/AH-2026-000001?a=b c") == []
    assert english_runs(f"发票 AH-{YEAR}-000001（{YEAR}-11，USD 29.00）将于 {YEAR}-12-03 到期。\n—— AI Hub\n") == []


@pytest.mark.parametrize(("plan", "consequence_en", "consequence_zh"), [
    ("pro", SUSPEND_EN, "在付清之前，您的套餐将被限制为免费套餐的额度。"),
    ("enterprise", UNCOLLECTIBLE_EN, "该发票现已标记为无法收回；您仍可付款结清。")])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_payment_failed_emails_are_in_the_accounts_language(
        plan: str, consequence_en: str, consequence_zh: str, payments: PaymentService, service: AccountService,
        invoicer: Invoicer, stripe_client: stripe.StripeClient, db: sessionmaker[Session], catalog: Any) -> None:
    number, [(first, first_en, first_zh), (last, last_en, last_zh)] = _card_dunning_emails(
        service, invoicer, payments, stripe_client, db, catalog, CHARGE_FAILS, plan)
    assert first.kind == last.kind == "payment_failed"
    reason = first.payload["reason"]
    assert reason == "Your card was declined."
    failed_en = f"The payment of invoice {number} ({PERIOD}, USD 29.00) for Payer failed: {reason}.\n"
    assert first_en == (failed_en + f"We will try again on {YEAR}-12-03; you can also update your payment method."
                        + FOOTER_EN)
    assert last_en == (failed_en + "No further attempts will be made; please pay by another method. "
                       + consequence_en + FOOTER_EN)
    assert first.payload["next"] == f"We will try again on {YEAR}-12-03; you can also update your payment method."
    assert (first.payload["next_at"], first.payload["last"], first.payload["consequence"]) == (
        f"{YEAR}-12-03T09:00:00Z", False, None)
    assert (last.payload["next_at"], last.payload["last"], last.payload["consequence"]) == (
        None, True, "suspend" if plan == "pro" else "uncollectible")
    assert first.payload["transfer"] is False and first.payload["failure_code"] == "card_declined"

    assert english_runs(first_zh) == english_runs(last_zh) == []
    failed_zh = (f"[AI Hub] 发票 {number} 扣款失败\n"
                 f"Payer 的发票 {number}（{PERIOD}，USD 29.00）扣款失败：银行卡被拒绝。\n")
    assert first_zh == failed_zh + f"我们将于 {YEAR}-12-03 再次尝试扣款；您也可以更新付款方式。" + FOOTER_ZH
    assert last_zh == failed_zh + "我们不会再尝试扣款，请通过其他方式付款。" + consequence_zh + FOOTER_ZH


@pytest.mark.parametrize("url", ["https://billing.example.com/pay/{invoice}", None])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_payment_action_required_emails_are_in_the_accounts_language(
        url: str | None, localstripe: str, payments: PaymentService, service: AccountService, invoicer: Invoicer,
        stripe_client: stripe.StripeClient, db: sessionmaker[Session], catalog: Any) -> None:
    payments.action_url = url
    number, [(first, first_en, first_zh), (last, last_en, last_zh)] = _card_dunning_emails(
        service, invoicer, payments, stripe_client, db, catalog, NEEDS_3DS)
    assert first.kind == last.kind == "payment_action_required"
    link = f"https://billing.example.com/pay/{number}"
    assert first.payload["action_url"] == (link if url else None)
    action_en = (f"Confirm the payment here: {link}" if url
                 else "Add another payment method, or ask us for a link to confirm this payment.")
    asked_en = (f"Your bank (or PayPal) asks you to confirm the payment of invoice {number} ({PERIOD}, USD 29.00) "
                f"for Payer before it can be charged.\n{action_en}\n")
    assert first_en == (asked_en + f"We will try again on {YEAR}-12-03; you can also update your payment method."
                        + FOOTER_EN)
    assert last_en == (asked_en + "No further attempts will be made; please pay by another method. " + SUSPEND_EN
                       + FOOTER_EN)
    assert first.payload["action"] == action_en

    assert english_runs(first_zh) == english_runs(last_zh) == []
    action_zh = f"请在此确认付款：{link}" if url else "请添加其他付款方式，或联系我们获取确认此付款的链接。"
    asked_zh = (f"[AI Hub] 请确认发票 {number} 的付款\n您的银行（或 PayPal）要求您先确认 Payer 的发票 {number}"
                f"（{PERIOD}，USD 29.00）的付款，然后才能扣款。\n{action_zh}\n")
    assert first_zh == asked_zh + f"我们将于 {YEAR}-12-03 再次尝试扣款；您也可以更新付款方式。" + FOOTER_ZH
    assert last_zh == (asked_zh + "我们不会再尝试扣款，请通过其他方式付款。"
                       "在付清之前，您的套餐将被限制为免费套餐的额度。" + FOOTER_ZH)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_payment_reminder_emails_are_in_the_accounts_language(
        payments: PaymentService, service: AccountService, invoicer: Invoicer, db: sessionmaker[Session],
        catalog: Any) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.enable_bank_transfer(account)
    dunner = Dunner(db, payments, service, catalog, (1,), clock=clock)
    due = invoicer.get(number)["due_at"]
    clock.set(due.removesuffix("Z"))
    clock.advance(3600)
    assert dunner.collect()["overdue"] == 1
    reminded_on = (datetime.fromtimestamp(clock(), UTC) + timedelta(days=1)).date().isoformat()
    clock.now += DAY
    assert dunner.run()["exhausted"] == 1
    [(first, first_en, first_zh), (last, last_en, last_zh)] = emails(db, account)
    assert first.kind == last.kind == "payment_reminder"
    overdue_en = (f"Invoice {number} ({PERIOD}, USD 29.00) for Payer was due on {due[:10]} and we have not received "
                  f"your bank transfer yet. Please transfer USD 29.00 with the reference {number}.\n")
    assert first_en == overdue_en + f"We will remind you again on {reminded_on}." + FOOTER_EN
    assert last_en == overdue_en + "This is the last reminder. " + SUSPEND_EN + FOOTER_EN

    assert first.payload["transfer"] is True and (first.payload["last"], last.payload["last"]) == (False, True)
    assert english_runs(first_zh) == english_runs(last_zh) == []
    overdue_zh = (f"[AI Hub] 提醒：发票 {number} 已逾期\n"
                  f"Payer 的发票 {number}（{PERIOD}，USD 29.00）已于 {due[:10]} 到期，我们尚未收到您的银行转账。"
                  f"请转账 USD 29.00，并注明参考号 {number}。\n")
    assert first_zh == overdue_zh + f"我们将于 {reminded_on} 再次提醒您。" + FOOTER_ZH
    assert last_zh == overdue_zh + "这是最后一次提醒。在付清之前，您的套餐将被限制为免费套餐的额度。" + FOOTER_ZH


def test_a_payload_recorded_before_the_facts_renders_its_english_text() -> None:
    from billing.notifications import render_email
    old = {"number": "AH-2026-000007", "period": "2026-11", "total_minor": 2900, "currency": "USD",
           "due_at": "2026-12-16T00:00:00Z", "retries": 0, "reason": "Your card was declined.",
           "next": "We will try again on 2026-12-03; you can also update your payment method.",
           "action_url": None, "action": "Add another payment method, or ask us for a link to confirm this payment."}
    _, english = render_email("payment_action_required", old, "en", "Payer")
    assert english == ("Your bank (or PayPal) asks you to confirm the payment of invoice AH-2026-000007 (2026-11, "
                       "USD 29.00) for Payer before it can be charged.\n" + old["action"] + "\n" + old["next"]
                       + FOOTER_EN)
    _, chinese = render_email("payment_failed", old, "zh", "Payer")
    assert chinese == ("Payer 的发票 AH-2026-000007（2026-11，USD 29.00）扣款失败：Your card was declined.。\n"
                       + old["next"] + FOOTER_ZH)          # no facts to say it in Chinese: the text recorded


@pytest.mark.parametrize(("code", "zh"), [
    (None, "未能扣款"), ("insufficient_funds", "余额不足"), ("instrument_declined", "付款方式被拒绝"),
    ("do_not_honor", "未能扣款（do_not_honor）")])
def test_the_failure_reason_in_chinese(code: str | None, zh: str) -> None:
    from billing.notifications import render_email
    payload = {"number": "AH-2026-000007", "period": "2026-11", "total_minor": 2900, "currency": "USD",
               "due_at": "2026-12-16T00:00:00Z", "retries": 4, "reason": "The bank said no to this one.",
               "failure_code": code, "transfer": False, "next_at": None, "last": True, "consequence": "unknown_code",
               "next": "No further attempts will be made; please pay by another method."}
    _, english = render_email("payment_failed", payload, "en", "Payer")
    assert english.startswith("The payment of invoice AH-2026-000007 (2026-11, USD 29.00) for Payer failed: The bank "
                              "said no to this one..\nNo further attempts will be made; please pay by another "
                              "method.\n\n")
    _, chinese = render_email("payment_failed", payload, "zh-TW", "Payer")
    assert f"扣款失败：{zh}。\n我们不会再尝试扣款，请通过其他方式付款。\n\n" in chinese
    assert english_runs(chinese) == []
