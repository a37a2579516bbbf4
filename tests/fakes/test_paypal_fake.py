"""The fake PayPal's wire shapes (fakes/paypal), spoken to with plain HTTP."""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fakes.paypal import FakePayPal
from tests.paypal_support import WebhookReceiver, call

PAYPAL_ID = re.compile(r"^[A-Z0-9]{17}$")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePayPal]:
    with FakePayPal() as server:
        yield server


@pytest.fixture(scope="module")
def two_step() -> Iterator[FakePayPal]:
    with FakePayPal(capture_on_create=False) as server:
        yield server


def token_for(fake: FakePayPal) -> str:
    basic = base64.b64encode(f"{fake.client_id}:{fake.client_secret}".encode()).decode()
    status, body = call(fake.url + "/v1/oauth2/token", "POST", raw=b"grant_type=client_credentials",
                        headers={"Authorization": f"Basic {basic}",
                                 "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    return str(body["access_token"])


def api(fake: FakePayPal, method: str, path: str, body: object = None, **headers: str) -> tuple[int, Any]:
    all_headers = {"Authorization": f"Bearer {token_for(fake)}", "Prefer": "return=representation"}
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return call(fake.url + path, method, body, all_headers)


def order_body(vault_id: str | None, value: str = "12.34", currency: str = "USD", **unit: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"intent": "CAPTURE", "purchase_units": [
        {"reference_id": "INV-1", "amount": {"currency_code": currency, "value": value}, **unit}]}
    if vault_id is not None:
        body["payment_source"] = {"paypal": {"vault_id": vault_id}}
    return body


def test_oauth_token_client_credentials(fake: FakePayPal) -> None:
    basic = base64.b64encode(f"{fake.client_id}:{fake.client_secret}".encode()).decode()
    status, body = call(fake.url + "/v1/oauth2/token", "POST", raw=b"grant_type=client_credentials",
                        headers={"Authorization": f"Basic {basic}",
                                 "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert body["token_type"] == "Bearer" and body["access_token"].startswith("A21AA")
    assert body["expires_in"] > 0 and body["app_id"] and "scope" in body and "nonce" in body

    wrong = base64.b64encode(f"{fake.client_id}:nope".encode()).decode()
    status, body = call(fake.url + "/v1/oauth2/token", "POST", raw=b"grant_type=client_credentials",
                        headers={"Authorization": f"Basic {wrong}",
                                 "Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["error"]) == (401, "invalid_client")


def test_api_calls_need_a_bearer_token(fake: FakePayPal) -> None:
    status, body = call(fake.url + "/v2/checkout/orders", "POST", order_body(None))
    assert (status, body["name"]) == (401, "AUTHENTICATION_FAILURE")
    status, body = call(fake.url + "/v2/checkout/orders", "POST", order_body(None),
                        {"Authorization": "Bearer A21AAnot-a-token"})
    assert (status, body["error"]) == (401, "invalid_token")


def test_vaulted_source_order_is_captured_on_create(fake: FakePayPal) -> None:
    vault_id = fake.add_payment_token()
    status, order = api(fake, "POST", "/v2/checkout/orders",
                        order_body(vault_id, invoice_id="INV-shape-1", custom_id="acct-1"))
    assert status == 201
    assert PAYPAL_ID.match(order["id"]) and order["intent"] == "CAPTURE" and order["status"] == "COMPLETED"
    assert order["payment_source"]["paypal"]["attributes"]["vault"]["id"] == vault_id
    [unit] = order["purchase_units"]
    assert unit["amount"] == {"currency_code": "USD", "value": "12.34"}
    [capture] = unit["payments"]["captures"]
    assert PAYPAL_ID.match(capture["id"]) and capture["status"] == "COMPLETED" and capture["final_capture"] is True
    assert capture["amount"] == {"currency_code": "USD", "value": "12.34"}
    assert capture["invoice_id"] == "INV-shape-1" and capture["custom_id"] == "acct-1"
    breakdown = capture["seller_receivable_breakdown"]
    assert breakdown["gross_amount"]["value"] == "12.34"
    assert {link["rel"] for link in capture["links"]} == {"self", "refund", "up"}

    assert api(fake, "GET", f"/v2/checkout/orders/{order['id']}") == (200, order)
    status, fetched = api(fake, "GET", f"/v2/payments/captures/{capture['id']}")
    assert status == 200 and fetched["status"] == "COMPLETED"
    assert any(o["id"] == order["id"] for o in fake.orders())


def test_minimal_representation_by_default(fake: FakePayPal) -> None:
    status, order = api(fake, "POST", "/v2/checkout/orders", order_body(fake.add_payment_token()),
                        Prefer="return=minimal")
    assert status == 201 and set(order) == {"id", "status", "links"}


def test_order_without_source_waits_for_the_payer(fake: FakePayPal) -> None:
    status, order = api(fake, "POST", "/v2/checkout/orders", order_body(None))
    assert (status, order["status"]) == (201, "CREATED")
    assert "payer-action" in {link["rel"] for link in order["links"]}
    status, error = api(fake, "POST", f"/v2/checkout/orders/{order['id']}/capture", {})
    assert (status, error["details"][0]["issue"]) == (422, "ORDER_NOT_APPROVED")


def test_two_step_capture(two_step: FakePayPal) -> None:
    vault_id = two_step.add_payment_token()
    status, order = api(two_step, "POST", "/v2/checkout/orders", order_body(vault_id))
    assert (status, order["status"]) == (201, "APPROVED")
    assert "payments" not in order["purchase_units"][0]
    status, captured = api(two_step, "POST", f"/v2/checkout/orders/{order['id']}/capture", {})
    assert (status, captured["status"]) == (201, "COMPLETED")
    assert captured["purchase_units"][0]["payments"]["captures"][0]["status"] == "COMPLETED"
    status, again = api(two_step, "POST", f"/v2/checkout/orders/{order['id']}/capture", {})
    assert status == 422 and again["details"][0]["issue"] == "ORDER_ALREADY_CAPTURED"


def test_declining_instrument_is_a_422(fake: FakePayPal) -> None:
    vault_id = fake.add_payment_token(issue="INSTRUMENT_DECLINED")
    status, error = api(fake, "POST", "/v2/checkout/orders", order_body(vault_id))
    assert status == 422
    assert error["name"] == "UNPROCESSABLE_ENTITY" and error["debug_id"] and error["message"]
    assert error["details"][0]["issue"] == "INSTRUMENT_DECLINED" and error["details"][0]["description"]
    assert error["links"][0]["rel"] == "information_link"


def test_unknown_vault_id(fake: FakePayPal) -> None:
    status, error = api(fake, "POST", "/v2/checkout/orders", order_body("nosuchtoken"))
    assert (status, error["details"][0]["issue"]) == (422, "TOKEN_ID_NOT_FOUND")


@pytest.mark.parametrize(("body", "status", "issue"), [
    ({"purchase_units": [{"amount": {"currency_code": "USD", "value": "1.00"}}]}, 400, "MISSING_REQUIRED_PARAMETER"),
    (order_body(None, value="10.001"), 400, "DECIMAL_PRECISION"),
    (order_body(None, value="10.5", currency="JPY"), 400, "DECIMAL_PRECISION"),
    (order_body(None, value="ten"), 400, "INVALID_PARAMETER_VALUE"),
    (order_body(None, currency="XYZ"), 422, "CURRENCY_NOT_SUPPORTED"),
    (order_body(None, value="0.00"), 422, "CANNOT_BE_ZERO_OR_NEGATIVE"),
])
def test_validation(fake: FakePayPal, body: dict[str, Any], status: int, issue: str) -> None:
    got, error = api(fake, "POST", "/v2/checkout/orders", body)
    assert (got, error["details"][0]["issue"]) == (status, issue)


def test_request_id_replays_the_first_answer(fake: FakePayPal) -> None:
    vault_id = fake.add_payment_token()
    before = len(fake.orders())
    first = api(fake, "POST", "/v2/checkout/orders", order_body(vault_id), PayPal_Request_Id="req-1")
    second = api(fake, "POST", "/v2/checkout/orders", order_body(vault_id), PayPal_Request_Id="req-1")
    assert first == second and first[0] == 201
    assert len(fake.orders()) == before + 1


def test_duplicate_invoice_id_refused(fake: FakePayPal) -> None:
    vault_id = fake.add_payment_token()
    assert api(fake, "POST", "/v2/checkout/orders", order_body(vault_id, invoice_id="INV-dup"))[0] == 201
    status, error = api(fake, "POST", "/v2/checkout/orders", order_body(vault_id, invoice_id="INV-dup"))
    assert (status, error["details"][0]["issue"]) == (422, "DUPLICATE_INVOICE_ID")


def test_mock_response_header(fake: FakePayPal) -> None:
    status, error = api(fake, "POST", "/v2/checkout/orders", order_body(fake.add_payment_token()),
                        PayPal_Mock_Response='{"mock_application_codes": "TRANSACTION_REFUSED"}')
    assert (status, error["details"][0]["issue"]) == (422, "TRANSACTION_REFUSED")


def test_refunds_partial_full_and_refused(fake: FakePayPal) -> None:
    _, order = api(fake, "POST", "/v2/checkout/orders", order_body(fake.add_payment_token(), value="10.00"))
    capture_id = order["purchase_units"][0]["payments"]["captures"][0]["id"]
    path = f"/v2/payments/captures/{capture_id}/refund"

    status, refund = api(fake, "POST", path, {"amount": {"currency_code": "USD", "value": "2.50"}})
    assert status == 201 and PAYPAL_ID.match(refund["id"]) and refund["status"] == "COMPLETED"
    assert refund["amount"] == {"currency_code": "USD", "value": "2.50"}
    assert refund["seller_payable_breakdown"]["total_refunded_amount"]["value"] == "2.50"
    assert api(fake, "GET", f"/v2/payments/captures/{capture_id}")[1]["status"] == "PARTIALLY_REFUNDED"
    assert api(fake, "GET", f"/v2/payments/refunds/{refund['id']}") == (200, refund)

    status, error = api(fake, "POST", path, {"amount": {"currency_code": "USD", "value": "7.51"}})
    assert (status, error["details"][0]["issue"]) == (422, "REFUND_AMOUNT_EXCEEDED")
    status, error = api(fake, "POST", path, {"amount": {"currency_code": "EUR", "value": "1.00"}})
    assert (status, error["details"][0]["issue"]) == (422, "CURRENCY_MISMATCH")

    status, rest = api(fake, "POST", path, {})   # no amount: whatever is left
    assert (status, rest["amount"]["value"]) == (201, "7.50")
    assert api(fake, "GET", f"/v2/payments/captures/{capture_id}")[1]["status"] == "REFUNDED"
    status, error = api(fake, "POST", path, {"amount": {"currency_code": "USD", "value": "0.01"}})
    assert (status, error["details"][0]["issue"]) == (422, "CAPTURE_FULLY_REFUNDED")


def test_not_found(fake: FakePayPal) -> None:
    for path in ("/v2/checkout/orders/NOSUCHORDER00000", "/v2/payments/captures/NOSUCHCAPTURE0000",
                 "/v2/payments/refunds/NOSUCHREFUND00000", "/v3/vault/payment-tokens/nosuch"):
        status, error = api(fake, "GET", path)
        assert (status, error["name"], error["details"][0]["issue"]) == (404, "RESOURCE_NOT_FOUND",
                                                                         "INVALID_RESOURCE_ID")


def test_payment_token_shapes(fake: FakePayPal) -> None:
    card = fake.add_payment_token("card", brand="MASTERCARD", last_digits="5454", customer_id="cust-1")
    status, token = api(fake, "GET", f"/v3/vault/payment-tokens/{card}")
    assert status == 200 and token["id"] == card and token["customer"] == {"id": "cust-1"}
    assert token["payment_source"]["card"]["brand"] == "MASTERCARD"
    assert token["payment_source"]["card"]["last_digits"] == "5454"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def verify_body(received_headers: dict[str, str], body: Any, webhook_id: str) -> dict[str, Any]:
    h = {k.lower(): v for k, v in received_headers.items()}
    return {"auth_algo": h["paypal-auth-algo"], "cert_url": h["paypal-cert-url"],
            "transmission_id": h["paypal-transmission-id"], "transmission_sig": h["paypal-transmission-sig"],
            "transmission_time": h["paypal-transmission-time"], "webhook_id": webhook_id, "webhook_event": body}


def test_webhooks_are_signed_and_verifiable(receiver: WebhookReceiver) -> None:
    import json

    with FakePayPal() as fake:
        webhook_id = fake.add_webhook(receiver.url)
        fake.add_webhook(receiver.url, ("PAYMENT.CAPTURE.DENIED",))   # not subscribed to these events
        _, order = api(fake, "POST", "/v2/checkout/orders", order_body(fake.add_payment_token(), value="5.00"))
        capture = order["purchase_units"][0]["payments"]["captures"][0]
        api(fake, "POST", f"/v2/payments/captures/{capture['id']}/refund", {})
        completed, refunded = receiver.wait(2)
        fake.wait_for_deliveries(2)
        assert [d.status for d in fake.deliveries()] == [200, 200]

        event = json.loads(completed.body)
        assert event["event_type"] == "PAYMENT.CAPTURE.COMPLETED" and event["resource_type"] == "capture"
        assert event["resource"]["id"] == capture["id"] and event["id"].startswith("WH-")
        assert event["event_version"] == "1.0" and event["resource_version"] == "2.0" and event["summary"]
        refund_event = json.loads(refunded.body)
        assert refund_event["event_type"] == "PAYMENT.CAPTURE.REFUNDED"
        assert refund_event["resource"]["amount"]["value"] == "5.00"

        headers = {k.lower(): v for k, v in completed.headers.items()}
        assert headers["paypal-auth-algo"] == "SHA256withRSA"
        # The signature is real: RSA-SHA256 over "id|time|webhook_id|crc32(body)" with the served certificate.
        status, pem = call(headers["paypal-cert-url"])
        assert status == 200
        public_key = x509.load_pem_x509_certificate(pem).public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        message = (f"{headers['paypal-transmission-id']}|{headers['paypal-transmission-time']}|{webhook_id}|"
                   f"{zlib.crc32(completed.body)}").encode()
        public_key.verify(base64.b64decode(headers["paypal-transmission-sig"]), message, padding.PKCS1v15(),
                          hashes.SHA256())

        verify = "/v1/notifications/verify-webhook-signature"
        genuine = verify_body(completed.headers, event, webhook_id)
        assert api(fake, "POST", verify, genuine) == (200, {"verification_status": "SUCCESS"})
        tampered = {**event, "resource": {**event["resource"], "amount": {"currency_code": "USD", "value": "500"}}}
        for forged in ({**genuine, "webhook_event": tampered},
                       {**genuine, "webhook_id": "OTHERWEBHOOK00000"},
                       {**genuine, "transmission_sig": base64.b64encode(b"x" * 256).decode()},
                       {**genuine, "transmission_id": "0f8a2c6e-0000-4000-8000-000000000000"},
                       {**genuine, "webhook_event": refund_event}):
            assert api(fake, "POST", verify, forged) == (200, {"verification_status": "FAILURE"})
        status, error = api(fake, "POST", verify, {k: v for k, v in genuine.items() if k != "cert_url"})
        assert (status, error["name"]) == (400, "VALIDATION_ERROR")
        assert api(fake, "GET", f"/v1/notifications/webhooks-events/{event['id']}") == (200, event)


def test_pending_capture_completes_later(receiver: WebhookReceiver) -> None:
    with FakePayPal() as fake:
        fake.add_webhook(receiver.url, ("PAYMENT.CAPTURE.PENDING", "PAYMENT.CAPTURE.COMPLETED"))
        _, order = api(fake, "POST", "/v2/checkout/orders", order_body(fake.add_payment_token(pending=True)))
        capture = order["purchase_units"][0]["payments"]["captures"][0]
        assert capture["status"] == "PENDING" and capture["status_details"] == {"reason": "PENDING_REVIEW"}
        status, error = api(fake, "POST", f"/v2/payments/captures/{capture['id']}/refund", {})
        assert (status, error["details"][0]["issue"]) == (422, "CAPTURE_STATUS_NOT_VALID")
        fake.complete_pending(capture["id"])
        assert api(fake, "GET", f"/v2/payments/captures/{capture['id']}")[1]["status"] == "COMPLETED"
        import json

        events = [json.loads(r.body)["event_type"] for r in receiver.wait(2)]
        assert events == ["PAYMENT.CAPTURE.PENDING", "PAYMENT.CAPTURE.COMPLETED"]
