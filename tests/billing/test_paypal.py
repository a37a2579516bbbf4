"""The PayPal provider (billing/payments/paypal_provider.py) against the project's fake PayPal (fakes/paypal)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from billing.errors import InvalidInput
from billing.payments.paypal_provider import (
    PayPalProvider,
    PayPalSettings,
    from_paypal_amount,
    to_paypal_amount,
)
from billing.payments.provider import PaymentProvider, ProviderUnavailable
from fakes.paypal import FakePayPal
from gateway.errors import ConfigError
from tests.paypal_support import WebhookReceiver


@pytest.fixture(scope="module", params=["single-step", "two-step"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakePayPal]:
    """PayPal captures a vaulted-source order on create; the two-step fake makes the provider call capture."""
    with FakePayPal(capture_on_create=request.param == "single-step") as server:
        yield server


@pytest.fixture
def provider(fake: FakePayPal) -> PayPalProvider:
    settings = PayPalSettings.from_env({"PAYPAL_CLIENT_ID": fake.client_id,
                                        "PAYPAL_CLIENT_SECRET": fake.client_secret,
                                        "AIHUB_PAYPAL_API_BASE": fake.url + "/",
                                        "PAYPAL_WEBHOOK_ID": "UNUSEDWEBHOOK0000"})
    return PayPalProvider(settings)


_numbers = iter(range(1, 1_000_000))


def invoice(total_minor: int = 1234, currency: str = "USD") -> dict[str, Any]:
    return {"number": f"INV-PP-{next(_numbers):06d}", "account": "acct-1", "total_minor": total_minor,
            "currency": currency}


def captures_of(fake: FakePayPal, invoice_number: str) -> list[dict[str, Any]]:
    return [c for c in fake.captures() if c.get("invoice_id") == invoice_number]


# -- settings and money --------------------------------------------------------------------------------------------
def test_settings_from_env() -> None:
    settings = PayPalSettings.from_env({"PAYPAL_CLIENT_ID": "id", "PAYPAL_CLIENT_SECRET": "secret"})
    assert settings.api_base == "https://api-m.paypal.com" and settings.webhook_id == ""
    assert "secret" not in repr(settings)
    with pytest.raises(ConfigError, match="PAYPAL_CLIENT_SECRET"):
        PayPalSettings.from_env({"PAYPAL_CLIENT_ID": "id"})
    with pytest.raises(ConfigError, match="AIHUB_PAYPAL_API_BASE"):
        PayPalSettings.from_env({"PAYPAL_CLIENT_ID": "id", "PAYPAL_CLIENT_SECRET": "s",
                                 "AIHUB_PAYPAL_API_BASE": "ftp://x"})


def test_money_is_decimal_strings() -> None:
    assert to_paypal_amount(1234, "usd") == {"currency_code": "USD", "value": "12.34"}
    assert to_paypal_amount(5, "EUR") == {"currency_code": "EUR", "value": "0.05"}
    assert to_paypal_amount(500, "JPY") == {"currency_code": "JPY", "value": "500"}
    assert to_paypal_amount(10**17 + 1, "USD")["value"] == "1000000000000000.01"   # exact, no float
    assert from_paypal_amount({"currency_code": "USD", "value": "12.34"}) == 1234
    assert from_paypal_amount({"currency_code": "JPY", "value": "500"}) == 500
    assert from_paypal_amount({"currency_code": "USD", "value": "0.1"}) == 10
    with pytest.raises(ValueError):
        from_paypal_amount({"currency_code": "USD", "value": "0.001"})
    with pytest.raises(InvalidInput):
        to_paypal_amount(Decimal("12.5"), "USD")  # type: ignore[arg-type]


def test_is_a_payment_provider(provider: PayPalProvider) -> None:
    typed: PaymentProvider = provider
    assert typed.name == "paypal"


# -- customers and payment methods ---------------------------------------------------------------------------------
def test_customer_is_a_stable_reference(provider: PayPalProvider, fake: FakePayPal) -> None:
    before = len(fake.requests())
    account = {"id": "acct-42", "name": "Acme", "billing_email": "billing@acme.test"}
    assert provider.create_customer(account) == provider.create_customer(account) == "aihub-acct-42"
    assert len(fake.requests()) == before     # nothing to create at PayPal


def test_attach_payment_method(provider: PayPalProvider, fake: FakePayPal) -> None:
    wallet = fake.add_payment_token()
    assert provider.attach_payment_method("aihub-acct-1", wallet).provider_method_id == wallet
    assert provider.attach_payment_method("aihub-acct-1", wallet).brand == "paypal"
    card = fake.add_payment_token("card", brand="MASTERCARD", last_digits="5454")
    details = provider.attach_payment_method("aihub-acct-1", card)
    assert (details.provider_method_id, details.brand, details.last4) == (f"card:{card}", "mastercard", "5454")
    with pytest.raises(InvalidInput) as err:
        provider.attach_payment_method("aihub-acct-1", "nosuchtoken")
    assert err.value.code == "bad_payment_method"
    with pytest.raises(InvalidInput):
        provider.attach_payment_method("aihub-acct-1", "../v2/checkout/orders")


# -- charges -------------------------------------------------------------------------------------------------------
def test_capture_succeeds(provider: PayPalProvider, fake: FakePayPal) -> None:
    inv = invoice(1234)
    result = provider.charge(inv, "aihub-acct-1", fake.add_payment_token(), "pay-key-success")
    assert result.state == "succeeded" and result.failure_code is None
    [capture] = captures_of(fake, inv["number"])
    assert result.provider_id == capture["id"]          # what a refund needs
    assert capture["status"] == "COMPLETED" and capture["amount"] == {"currency_code": "USD", "value": "12.34"}
    created = [r for r in fake.requests() if r["path"] == "/v2/checkout/orders" and r["method"] == "POST"][-1]
    assert created["headers"]["paypal-request-id"] == "pay-key-success"
    assert created["body"]["intent"] == "CAPTURE"
    assert created["body"]["purchase_units"][0]["invoice_id"] == inv["number"]
    assert created["body"]["payment_source"]["paypal"]["vault_id"]
    capture_calls = [r for r in fake.requests() if r["path"].endswith("/capture")
                     and r["headers"].get("paypal-request-id") == "pay-key-success:capture"]
    assert len(capture_calls) == (0 if fake.app.capture_on_create else 1)


def test_card_vault_charge_and_zero_decimal_currency(provider: PayPalProvider, fake: FakePayPal) -> None:
    card = provider.attach_payment_method("aihub-acct-1", fake.add_payment_token("card")).provider_method_id
    inv = invoice(500, "JPY")
    assert provider.charge(inv, "aihub-acct-1", card, "pay-key-jpy").state == "succeeded"
    [capture] = captures_of(fake, inv["number"])
    assert capture["amount"] == {"currency_code": "JPY", "value": "500"}


def test_decline_maps_to_failed_with_the_issue(provider: PayPalProvider, fake: FakePayPal) -> None:
    inv = invoice()
    result = provider.charge(inv, "aihub-acct-1", fake.add_payment_token(issue="INSTRUMENT_DECLINED"),
                             "pay-key-declined")
    assert result.state == "failed" and result.failure_code == "instrument_declined"
    assert result.failure_message
    assert captures_of(fake, inv["number"]) == []


def test_pending_capture_is_processing(provider: PayPalProvider, fake: FakePayPal) -> None:
    inv = invoice()
    result = provider.charge(inv, "aihub-acct-1", fake.add_payment_token(pending=True), "pay-key-pending")
    assert (result.state, result.failure_code) == ("processing", "pending_review")
    [capture] = captures_of(fake, inv["number"])
    assert result.provider_id == capture["id"]


def test_idempotent_retry_returns_the_same_order(provider: PayPalProvider, fake: FakePayPal) -> None:
    inv = invoice()
    method = fake.add_payment_token()
    first = provider.charge(inv, "aihub-acct-1", method, "pay-key-retry")
    orders_before = len(fake.orders())
    again = provider.charge(inv, "aihub-acct-1", method, "pay-key-retry")
    assert again == first and first.state == "succeeded"
    assert len(fake.orders()) == orders_before           # no second order
    assert len(captures_of(fake, inv["number"])) == 1    # no second capture
    # A new attempt key for an invoice already paid is refused by PayPal too (invoice_id is unique).
    other = provider.charge(inv, "aihub-acct-1", method, "pay-key-retry-2")
    assert (other.state, other.failure_code) == ("failed", "duplicate_invoice_id")
    assert len(captures_of(fake, inv["number"])) == 1


def test_declined_retry_with_same_key_is_still_declined(provider: PayPalProvider, fake: FakePayPal) -> None:
    method = fake.add_payment_token(issue="INSTRUMENT_DECLINED")
    inv = invoice()
    assert provider.charge(inv, "aihub-acct-1", method, "pay-key-decl-2") == \
        provider.charge(inv, "aihub-acct-1", method, "pay-key-decl-2")


# -- refunds -------------------------------------------------------------------------------------------------------
def test_partial_then_full_refund_then_over_refund(provider: PayPalProvider, fake: FakePayPal) -> None:
    inv = invoice(1000)
    paid = provider.charge(inv, "aihub-acct-1", fake.add_payment_token(), "pay-key-refunds")
    assert paid.state == "succeeded" and paid.provider_id is not None

    partial = provider.refund(paid.provider_id, 250, "refund-key-1")
    assert partial.state == "succeeded" and partial.provider_id
    [capture] = captures_of(fake, inv["number"])
    assert capture["status"] == "PARTIALLY_REFUNDED"
    assert [r["amount"]["value"] for r in fake.refunds() if r["id"] == partial.provider_id] == ["2.50"]

    over = provider.refund(paid.provider_id, 751, "refund-key-2")
    assert over.state == "failed" and over.failure_message is not None
    assert "REFUND_AMOUNT_EXCEEDED" in over.failure_message

    rest = provider.refund(paid.provider_id, 750, "refund-key-3")
    assert rest.state == "succeeded"
    [capture] = captures_of(fake, inv["number"])
    assert capture["status"] == "REFUNDED"
    # The same refund retried with its key: the first answer again, no second refund.
    assert provider.refund(paid.provider_id, 750, "refund-key-3") == rest
    assert sum(1 for r in fake.refunds() if r.get("invoice_id") == inv["number"]) == 2

    done = provider.refund(paid.provider_id, 1, "refund-key-4")
    assert done.state == "failed" and "CAPTURE_FULLY_REFUNDED" in (done.failure_message or "")


def test_full_refund_at_once(provider: PayPalProvider, fake: FakePayPal) -> None:
    inv = invoice(4999)
    paid = provider.charge(inv, "aihub-acct-1", fake.add_payment_token(), "pay-key-full-refund")
    assert paid.provider_id is not None
    assert provider.refund(paid.provider_id, 4999, "refund-key-full").state == "succeeded"
    assert captures_of(fake, inv["number"])[0]["status"] == "REFUNDED"


def test_refund_of_unknown_capture_fails(provider: PayPalProvider) -> None:
    result = provider.refund("NOSUCHCAPTURE0000", 100, "refund-key-unknown")
    assert result.state == "failed" and result.provider_id is None


# -- OAuth ---------------------------------------------------------------------------------------------------------
def test_access_token_is_cached_and_refreshed_once_when_revoked(fake: FakePayPal) -> None:
    provider = PayPalProvider(PayPalSettings(fake.client_id, fake.client_secret, fake.url))
    before = fake.token_requests
    for key in ("tok-1", "tok-2", "tok-3"):
        assert provider.charge(invoice(), "c", fake.add_payment_token(), key).state == "succeeded"
    assert fake.token_requests == before + 1
    fake.expire_tokens()
    assert provider.charge(invoice(), "c", fake.add_payment_token(), "tok-4").state == "succeeded"
    assert fake.token_requests == before + 2


def test_token_expiry_by_clock(fake: FakePayPal) -> None:
    now = [1000.0]
    provider = PayPalProvider(PayPalSettings(fake.client_id, fake.client_secret, fake.url), clock=lambda: now[0])
    before = fake.token_requests
    provider.attach_payment_method("c", fake.add_payment_token())
    now[0] += 32400 - 61        # still valid (a minute's margin)
    provider.attach_payment_method("c", fake.add_payment_token())
    assert fake.token_requests == before + 1
    now[0] += 2
    provider.attach_payment_method("c", fake.add_payment_token())
    assert fake.token_requests == before + 2


def test_bad_credentials_and_unreachable(fake: FakePayPal) -> None:
    wrong = PayPalProvider(PayPalSettings(fake.client_id, "wrong", fake.url))
    with pytest.raises(ProviderUnavailable, match="credentials"):
        wrong.charge(invoice(), "c", fake.add_payment_token(), "pay-key-wrong-creds")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = PayPalProvider(PayPalSettings("id", "secret", f"http://127.0.0.1:{port}", timeout_s=2))
    with pytest.raises(ProviderUnavailable):
        down.charge(invoice(), "c", "vault", "pay-key-down")


# -- webhooks ------------------------------------------------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def test_webhook_verification(provider: PayPalProvider, fake: FakePayPal, receiver: WebhookReceiver) -> None:
    webhook_id = fake.add_webhook(receiver.url, ("PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.REFUNDED"))
    paid = provider.charge(invoice(800), "aihub-acct-1", fake.add_payment_token(), "pay-key-webhook")
    assert paid.provider_id is not None
    assert provider.refund(paid.provider_id, 300, "refund-key-webhook").state == "succeeded"
    completed, refunded = receiver.wait(2)
    assert json.loads(completed.body)["event_type"] == "PAYMENT.CAPTURE.COMPLETED"
    assert json.loads(refunded.body)["event_type"] == "PAYMENT.CAPTURE.REFUNDED"

    # Genuine: SUCCESS (header names are case-insensitive, the body may be bytes or str).
    assert provider.verify_webhook(completed.headers, completed.body, webhook_id) is True
    assert provider.verify_webhook({k.upper(): v for k, v in refunded.headers.items()}, refunded.body.decode(),
                                   webhook_id) is True

    # The webhook id from the settings when none is given: not this webhook's, so FAILURE.
    assert provider.verify_webhook(completed.headers, completed.body) is False
    # Tampered body: a different amount.
    event = json.loads(completed.body)
    event["resource"]["amount"]["value"] = "8000.00"
    assert provider.verify_webhook(completed.headers, json.dumps(event).encode(), webhook_id) is False
    # Another event's body under these headers (a replayed signature).
    assert provider.verify_webhook(completed.headers, refunded.body, webhook_id) is False
    # A forged signature, a made-up transmission, another webhook's id.
    forged_sig = {**completed.headers, "Paypal-Transmission-Sig": "Zm9yZ2Vk" * 40}
    assert provider.verify_webhook(forged_sig, completed.body, webhook_id) is False
    made_up = {**completed.headers, "Paypal-Transmission-Id": "6a3f0c8e-1111-4111-8111-111111111111"}
    assert provider.verify_webhook(made_up, completed.body, webhook_id) is False
    assert provider.verify_webhook(completed.headers, completed.body, "OTHERWEBHOOK00000") is False
    # Missing headers or a body that is not an event: refused without asking PayPal.
    before = len(fake.requests())
    missing = {k: v for k, v in completed.headers.items() if k.lower() != "paypal-transmission-sig"}
    assert provider.verify_webhook(missing, completed.body, webhook_id) is False
    assert provider.verify_webhook(completed.headers, b"not json", webhook_id) is False
    assert provider.verify_webhook(completed.headers, b"[]", webhook_id) is False
    assert provider.verify_webhook(completed.headers, completed.body, "") is False
    assert len(fake.requests()) == before


def test_webhook_signed_without_delivery(provider: PayPalProvider, fake: FakePayPal) -> None:
    """An event the fake signs for one webhook (sign_event) verifies only for that webhook id."""
    event = fake.app.make_event("PAYMENT.CAPTURE.COMPLETED", "capture",
                                {"id": "CAPTUREID00000000", "status": "COMPLETED",
                                 "amount": {"currency_code": "USD", "value": "1.00"}})
    headers, body = fake.sign_event("WEBHOOKAAAAAAAAAA", event)
    assert provider.verify_webhook(headers, body, "WEBHOOKAAAAAAAAAA") is True
    assert provider.verify_webhook(headers, body, "WEBHOOKBBBBBBBBBB") is False
