"""The payments round settles what the providers left unanswered, by asking them: a refund left pending because
Stripe was unreachable or its answer was lost (real localstripe), and PayPal attempts left processing, polled
through the capture or order (the project's fake PayPal, no webhook subscribed)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import stripe
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.errors import InvalidInput
from billing.invoicing import Invoicer
from billing.payments.bank_transfer import BankTransferProvider
from billing.payments.paypal_provider import PayPalProvider, PayPalSettings
from billing.payments.provider import ProviderUnavailable, RefundResult
from billing.payments.service import PaymentService
from billing.payments.stripe_provider import StripeProvider, StripeSettings
from fakes.paypal import FakePayPal
from tests.billing.test_payments_stripe import VISA, card, open_invoice
from tests.quota.conftest import YEAR, PinnedClock

MINUTES_11 = 11 * 60


class LostRefunds(StripeProvider):
    """Stripe whose refund answers never arrive: `reached` says whether the request got to Stripe first."""

    def __init__(self, settings: StripeSettings, reached: bool) -> None:
        super().__init__(settings)
        self.reached = reached

    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        if self.reached:
            super().refund(provider_payment_id, amount_minor, idempotency_key)
        raise ProviderUnavailable("Stripe did not answer the refund (APIConnectionError).")


def stripe_refunds(client: stripe.StripeClient, intent: str) -> list[int]:
    return sorted(int(r.amount) for r in client.v1.refunds.list({"payment_intent": intent}).data)


@pytest.mark.parametrize("reached", [True, False], ids=["answer-lost", "never-reached"])
def test_a_pending_refund_is_settled_by_asking_stripe(reached: bool, payments: PaymentService,
                                                      service: AccountService, invoicer: Invoicer,
                                                      stripe_client: stripe.StripeClient,
                                                      stripe_settings: StripeSettings) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, VISA))
    intent = payments.charge_invoice(number)["provider_payment_id"]
    payments.providers["stripe"] = LostRefunds(stripe_settings, reached)

    with pytest.raises(ProviderUnavailable):
        payments.refund(number, 1200, reason="Outage on the 3rd", actor="cli")
    [pending] = payments.refunds(account)
    assert (pending["state"], pending["credit_note"], pending["amount_minor"]) == ("pending", None, 1200)
    assert payments.balance(number)["credited_minor"] == 0
    with pytest.raises(InvalidInput) as held:                  # the pending refund holds its amount
        payments.refund(number, 1701)
    assert held.value.code == "refund_exceeds_payment"
    assert stripe_refunds(stripe_client, intent) == ([1200] if reached else [])

    assert payments.reconcile_refunds() == {"settled": 0, "resent": 0, "failed": 0, "unreachable": 0}  # too recent
    clock.advance(MINUTES_11)
    if reached:     # found at Stripe by its key (metadata.refund), not sent again
        assert payments.reconcile_refunds() == {"settled": 1, "resent": 0, "failed": 0, "unreachable": 0}
    else:           # Stripe never got it: sent again with the same key, once Stripe answers
        assert payments.reconcile_refunds() == {"settled": 0, "resent": 0, "failed": 0, "unreachable": 1}
        payments.providers["stripe"] = StripeProvider(stripe_settings)
        assert payments.reconcile_refunds() == {"settled": 1, "resent": 1, "failed": 0, "unreachable": 0}
    assert payments.reconcile_refunds()["settled"] == 0                 # once
    [done] = payments.refunds(account)
    assert (done["state"], done["credit_note"], done["reason"]) == ("succeeded", f"CN-{YEAR}-000001",
                                                                   "Outage on the 3rd")
    assert [(n["number"], n["amount_minor"], n["reason"]) for n in payments.credit_notes(number)] == [
        (f"CN-{YEAR}-000001", 1200, "Outage on the 3rd")]
    payment = payments.payment_for(number)
    assert payment is not None and (payment["state"], payment["refunded_minor"]) == ("partially_refunded", 1200)
    assert stripe_refunds(stripe_client, intent) == [1200]                 # refunded once at Stripe


# -- PayPal --------------------------------------------------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakePayPal]:
    with FakePayPal() as server:
        yield server


@pytest.fixture
def paypal_payments(db: sessionmaker[Session], invoicer: Invoicer, service: AccountService,
                    fake: FakePayPal) -> PaymentService:
    provider = PayPalProvider(PayPalSettings(fake.client_id, fake.client_secret, fake.url))
    return PaymentService(db, invoicer, {"paypal": provider, "bank_transfer": BankTransferProvider()},
                          clock=service.clock)


def paypal_invoice(service: AccountService, invoicer: Invoicer, payments: PaymentService, fake: FakePayPal,
                   **token: Any) -> tuple[str, str]:
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, fake.add_payment_token(**token), provider="paypal")
    return account, number


def captures_for(fake: FakePayPal, number: str) -> list[Mapping[str, Any]]:
    return [c for c in fake.captures() if c.get("invoice_id") == number]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("outcome", ["completed", "declined"])
def test_a_pending_paypal_capture_is_settled_by_polling(outcome: str, paypal_payments: PaymentService,
                                                        service: AccountService, invoicer: Invoicer,
                                                        fake: FakePayPal) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    _, number = paypal_invoice(service, invoicer, paypal_payments, fake, pending=True)
    payment = paypal_payments.charge_invoice(number)
    assert (payment["state"], payment["failure_code"]) == ("processing", "pending_review")
    [capture] = captures_for(fake, number)
    assert payment["provider_payment_id"] == capture["id"]
    clock.advance(MINUTES_11)
    assert paypal_payments.reconcile() == {"settled": 0, "not_received": 0, "unreachable": 0}   # still PENDING
    (fake.complete_pending if outcome == "completed" else fake.decline_pending)(capture["id"])
    assert fake.deliveries() == []                                       # no webhook: only polling can tell
    assert paypal_payments.reconcile() == {"settled": 1, "not_received": 0, "unreachable": 0}
    polled = [r for r in fake.requests() if r["method"] == "GET" and r["path"] == f"/v2/payments/captures/"
              f"{capture['id']}"]
    assert polled
    if outcome == "completed":
        assert invoicer.get(number)["status"] == "paid"
        assert paypal_payments.attempts(number)[-1]["state"] == "succeeded"
        assert paypal_payments.refund(number, 900)["state"] == "succeeded"   # the capture id is what refunds need
    else:
        assert invoicer.get(number)["status"] == "open"
        assert (paypal_payments.attempts(number)[-1]["state"],
                paypal_payments.attempts(number)[-1]["failure_code"]) == ("failed", "declined")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("reached", [True, False], ids=["answer-lost", "never-reached"])
def test_a_paypal_attempt_without_an_answer_is_sent_again_with_its_key(reached: bool,
                                                                      paypal_payments: PaymentService,
                                                                      service: AccountService, invoicer: Invoicer,
                                                                      fake: FakePayPal) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    _, number = paypal_invoice(service, invoicer, paypal_payments, fake)
    prepared = paypal_payments._start_attempt(number)          # the worker dies around the provider call
    assert not isinstance(prepared, dict)
    attempt, provider, view, customer, method = prepared
    if reached:
        assert provider.charge(view, customer, method, attempt.idempotency_key).state == "succeeded"
    clock.advance(MINUTES_11)
    assert paypal_payments.reconcile() == {"settled": 1, "not_received": 0, "unreachable": 0}
    assert invoicer.get(number)["status"] == "paid"
    [capture] = captures_for(fake, number)                     # captured once, whichever way
    assert paypal_payments.payment_for(number)["provider_payment_id"] == capture["id"]  # type: ignore[index]
    assert len([o for o in fake.orders() if o["purchase_units"][0].get("invoice_id") == number]) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_paypal_webhook_names_the_capture_and_its_order(db: sessionmaker[Session], paypal_payments: PaymentService,
                                                          service: AccountService, invoicer: Invoicer,
                                                          fake: FakePayPal) -> None:
    """PayPal's capture events carry the order in supplementary_data: the payment holding the capture id is found
    (it used to be looked up by the order id, which no captured payment holds)."""
    from billing.provider_events import apply, record
    _, number = paypal_invoice(service, invoicer, paypal_payments, fake, pending=True)
    capture_id = paypal_payments.charge_invoice(number)["provider_payment_id"]
    resource = fake.complete_pending(capture_id)
    assert resource["supplementary_data"]["related_ids"]["order_id"] != capture_id
    event = fake.app.make_event("PAYMENT.CAPTURE.COMPLETED", "capture", resource)
    recorded = record(db, "paypal", event["id"], event["event_type"], event)
    assert recorded.event_id is not None
    assert apply(db, recorded.event_id, paypal_payments) == "applied"
    assert invoicer.get(number)["status"] == "paid"
    assert paypal_payments.payment_for(number)["provider_payment_id"] == capture_id  # type: ignore[index]
