"""Payment methods, payment history and refunds over the management API: Stripe methods on a real localstripe
(added by id, a SetupIntent's client_secret shown once), bank transfer, removal (never the last one of a paid
plan), refunds with credit notes (operator only, never more than was paid); no card number, provider customer id
or secret in any answer."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from starlette.testclient import TestClient

from api.context import ApiContext
from billing.payments.stripe_provider import StripeSettings
from tests.api.billing_support import close_november, invoice_number, use_stripe
from tests.api.conftest import error_code, operator
from tests.billing.conftest import localstripe, stripe_client, stripe_settings  # noqa: F401 (fixtures)
from tests.billing.test_payments_stripe import DECLINED, VISA, card
from tests.quota.conftest import PinnedClock


def methods(t: Any, tail: str = "") -> str:
    return f"/api/v1/accounts/{t.account_id}/payment-methods{tail}"


@pytest.fixture
def stripe_ctx(ctx: ApiContext, stripe_settings: StripeSettings) -> ApiContext:  # noqa: F811
    use_stripe(ctx, stripe_settings)
    return ctx


def paid_by_transfer(ctx: ApiContext, clock: PinnedClock, t: Any) -> str:
    close_november(ctx, clock)
    number = invoice_number(ctx, t.account_id)
    ctx.payments.mark_paid_by_bank_transfer(number, f"REF-{number}")
    return number


def test_list_add_and_remove_methods(client: TestClient, tenant: Any, stripe_ctx: ApiContext,
                                     stripe_client: stripe.StripeClient) -> None:  # noqa: F811
    t = tenant("enterprise")
    [bank] = client.get(methods(t), headers=t.h("billing")).json()["data"]
    assert (bank["provider"], bank["default"], bank["brand"], bank["last4"]) == ("bank_transfer", True, None, None)
    pm = card(stripe_client, VISA)
    headers = {**t.h("billing"), "Idempotency-Key": "add-visa"}
    added = client.post(methods(t), headers=headers, json={"provider": "stripe", "payment_method": pm})
    assert added.status_code == 201, added.text
    visa = added.json()
    assert set(visa) == {"id", "provider", "brand", "last4", "default", "created_at"}
    assert (visa["provider"], visa["brand"], visa["last4"], visa["default"]) == ("stripe", "visa", "4242", True)
    replay = client.post(methods(t), headers=headers, json={"provider": "stripe", "payment_method": pm})
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == visa
    listed = client.get(methods(t), headers=t.h()).json()["data"]
    assert [(m["provider"], m["default"]) for m in listed] == [("bank_transfer", False), ("stripe", True)]
    assert "pm_" not in str(listed) and "cus_" not in str(listed) and VISA not in str(listed)
    removed = client.delete(methods(t, f"/{visa['id']}"), headers=t.h("admin"))
    assert removed.status_code == 200 and removed.json()["id"] == visa["id"]
    [left] = client.get(methods(t), headers=t.h()).json()["data"]
    assert left["provider"] == "bank_transfer" and left["default"] is True       # the default moved back
    response = client.delete(methods(t, f"/{left['id']}"), headers=t.h())
    assert response.status_code == 409 and error_code(response) == "last_payment_method"
    response = client.delete(methods(t, f"/{visa['id']}"), headers=t.h())
    assert response.status_code == 404 and error_code(response) == "payment_method_not_found"


def test_a_free_account_may_remove_its_last_method(client: TestClient, tenant: Any) -> None:
    t = tenant("free")
    added = client.post(methods(t), headers=operator(), json={"provider": "bank_transfer"}).json()
    assert client.delete(methods(t, f"/{added['id']}"), headers=t.h()).status_code == 200
    assert client.get(methods(t), headers=t.h()).json()["data"] == []


def test_setup_intent_secret_is_shown_once(client: TestClient, tenant: Any, stripe_ctx: ApiContext) -> None:
    t = tenant("pro")
    headers = {**t.h(), "Idempotency-Key": "setup-1"}
    first = client.post(methods(t, "/setup-intent"), headers=headers)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["provider"] == "stripe" and body["setup_intent"].startswith("seti_")
    assert body["client_secret"].startswith(body["setup_intent"] + "_secret_")
    again = client.post(methods(t, "/setup-intent"), headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.json()["client_secret"] is None
    assert again.json()["setup_intent"] == body["setup_intent"]
    other = client.post(methods(t, "/setup-intent"), headers=t.h(), json={"provider": "stripe"})
    assert other.status_code == 201 and other.json()["setup_intent"] != body["setup_intent"]


def test_setup_intent_without_stripe_configured(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    ctx.payments.providers = {k: v for k, v in ctx.payments.providers.items() if k != "stripe"}
    t = tenant("pro")
    response = client.post(methods(t, "/setup-intent"), headers=t.h())
    assert response.status_code == 409 and error_code(response) == "provider_not_configured"


def test_bad_payment_method_input(client: TestClient, tenant: Any, stripe_ctx: ApiContext,
                                  stripe_client: stripe.StripeClient) -> None:  # noqa: F811
    t = tenant("pro")
    cases = [({"provider": "stripe"}, 400, "missing_field", "payment_method"),
             ({"provider": "visa", "payment_method": "pm_x"}, 400, "invalid_value", "provider"),
             ({"provider": "stripe", "payment_method": "pm_x", "number": VISA}, 400, "unknown_field", "number"),
             ({"provider": "stripe", "payment_method": "pm x"}, 400, "invalid_value", "payment_method"),
             ({"provider": "stripe", "payment_method": "pm_doesnotexist"}, 400, "bad_payment_method", None),
             ({"provider": "stripe", "payment_method": card(stripe_client, DECLINED)}, 402, "card_declined", None)]
    for body, status, code, param in cases:
        response = client.post(methods(t), headers=t.h(), json=body)
        assert response.status_code == status, (body, response.text)
        assert error_code(response) == code and response.json()["error"]["param"] == param
    response = client.delete(methods(t, "/0"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "out_of_range"
    response = client.delete(methods(t, "/abc"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "invalid_type"
    assert len(client.get(methods(t), headers=t.h()).json()["data"]) == 1       # the bank transfer only


def test_history_with_refunds_and_credit_notes(client: TestClient, tenant: Any, ctx: ApiContext,
                                               api_clock: PinnedClock) -> None:
    t = tenant("enterprise")
    number = paid_by_transfer(ctx, api_clock, t)
    total = ctx.invoicer.get(number)["total_minor"]
    refunds = f"/api/v1/accounts/{t.account_id}/invoices/{number}/refunds"
    headers = {**operator(), "Idempotency-Key": "refund-1"}
    done = client.post(refunds, headers=headers, json={"amount_minor": 100, "reason": "Goodwill"})
    assert done.status_code == 201, done.text
    refund = done.json()
    assert (refund["state"], refund["amount_minor"]) == ("succeeded", 100)
    assert refund["credit_note"].startswith("CN-")
    assert refund["payment"]["refunded_minor"] == 100 and refund["payment"]["state"] == "partially_refunded"
    replay = client.post(refunds, headers=headers, json={"amount_minor": 100, "reason": "Goodwill"})
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == refund
    [payment] = client.get(f"/api/v1/accounts/{t.account_id}/payments", headers=t.h("billing")).json()["data"]
    assert (payment["invoice"], payment["provider"], payment["amount_minor"], payment["state"]) == (
        number, "bank_transfer", total, "partially_refunded")
    [listed] = payment["refunds"]
    assert (listed["amount_minor"], listed["currency"], listed["credit_note"], listed["reason"]) == (
        100, "USD", refund["credit_note"], "Goodwill")
    detail = client.get(f"/api/v1/accounts/{t.account_id}/invoices/{number}", headers=t.h()).json()
    assert [n["number"] for n in detail["credit_notes"]] == [refund["credit_note"]]
    assert detail["balance"]["refunded_minor"] == 100 and detail["balance"]["credited_minor"] == 100


def test_refunds_are_the_operators_and_never_exceed_the_payment(client: TestClient, tenant: Any,
                                                                ctx: ApiContext, api_clock: PinnedClock) -> None:
    t = tenant("enterprise")
    number = paid_by_transfer(ctx, api_clock, t)
    total = ctx.invoicer.get(number)["total_minor"]
    refunds = f"/api/v1/accounts/{t.account_id}/invoices/{number}/refunds"
    for role in ("owner", "admin", "billing"):
        response = client.post(refunds, headers=t.h(role), json={"amount_minor": 1})
        assert response.status_code == 403 and error_code(response) == "forbidden"
    response = client.post(refunds, headers=operator(), json={"amount_minor": total + 1})
    assert response.status_code == 400 and error_code(response) == "refund_exceeds_payment"
    for body, code in (({"amount_minor": 0}, "out_of_range"), ({"amount_minor": "100"}, "invalid_type"),
                       ({"amount_minor": 1.5}, "invalid_type"), ({"amount_minor": 1, "reason": "x" * 301},
                                                                 "out_of_range"),
                       ({}, "missing_field"), ({"amount_minor": 1, "currency": "USD"}, "unknown_field")):
        response = client.post(refunds, headers=operator(), json=body)
        assert response.status_code == 400 and error_code(response) == code, (body, response.text)
    assert client.post(refunds, headers=operator(), json={"amount_minor": total}).status_code == 201
    response = client.post(refunds, headers=operator(), json={"amount_minor": 1})
    assert response.status_code == 400 and error_code(response) == "refund_exceeds_payment"
    assert ctx.payments.payment_for(number)["state"] == "refunded"  # type: ignore[index]


def test_nothing_to_refund_on_an_unpaid_invoice(client: TestClient, tenant: Any, ctx: ApiContext,
                                                api_clock: PinnedClock) -> None:
    t = tenant("pro")
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    response = client.post(f"/api/v1/accounts/{t.account_id}/invoices/{number}/refunds", headers=operator(),
                           json={"amount_minor": 1})
    assert response.status_code == 409 and error_code(response) == "nothing_to_refund"


def test_who_may_see_and_change_payment_methods(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    for role in ("developer", "viewer"):
        for path in (methods(t), f"/api/v1/accounts/{t.account_id}/payments"):
            response = client.get(path, headers=t.h(role))
            assert response.status_code == 403 and error_code(response) == "forbidden"
        assert client.post(methods(t), headers=t.h(role), json={"provider": "bank_transfer"}).status_code == 403
        assert client.post(methods(t, "/setup-intent"), headers=t.h(role)).status_code == 403
        assert client.delete(methods(t, "/1"), headers=t.h(role)).status_code == 403
    for role in ("owner", "admin", "billing"):
        assert client.get(methods(t), headers=t.h(role)).status_code == 200
        assert client.get(f"/api/v1/accounts/{t.account_id}/payments", headers=t.h(role)).status_code == 200


def test_another_tenants_methods_are_not_found(client: TestClient, tenant: Any, ctx: ApiContext,
                                               api_clock: PinnedClock) -> None:
    a, b = tenant("enterprise"), tenant("enterprise")
    [theirs] = client.get(methods(b), headers=b.h()).json()["data"]
    for method, path in (("GET", methods(b)), ("POST", methods(b)), ("POST", methods(b, "/setup-intent")),
                         ("DELETE", methods(b, f"/{theirs['id']}")),
                         ("GET", f"/api/v1/accounts/{b.account_id}/payments")):
        response = client.request(method, path, headers=a.h(), json={"provider": "bank_transfer"})
        assert response.status_code == 404 and error_code(response) == "account_not_found", (method, path)
    response = client.delete(methods(a, f"/{theirs['id']}"), headers=a.h())
    assert response.status_code == 404 and error_code(response) == "payment_method_not_found"
    number = paid_by_transfer(ctx, api_clock, b)
    response = client.post(f"/api/v1/accounts/{a.account_id}/invoices/{number}/refunds", headers=operator(),
                           json={"amount_minor": 1})
    assert response.status_code == 404 and error_code(response) == "invoice_not_found"
    assert len(client.get(methods(b), headers=b.h()).json()["data"]) == 1
    response = client.get("/api/v1/accounts/nosuchacct/payment-methods", headers=operator())
    assert response.status_code == 404 and error_code(response) == "account_not_found"


def test_unauthenticated(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    for method, path in (("GET", methods(t)), ("POST", methods(t)), ("POST", methods(t, "/setup-intent")),
                         ("DELETE", methods(t, "/1")), ("GET", f"/api/v1/accounts/{t.account_id}/payments"),
                         ("POST", f"/api/v1/accounts/{t.account_id}/invoices/AH-2026-000001/refunds")):
        response = client.request(method, path)
        assert response.status_code == 401 and error_code(response) == "missing_token", (method, path)
