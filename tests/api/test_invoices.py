"""Invoices over the management API: list, detail (lines, tax, balance, payments), PDF, pay now (Stripe on a real
localstripe, at most one charge), void (operator); who may do what; another tenant's invoices are not found."""

from __future__ import annotations

from typing import Any

import stripe
from starlette.testclient import TestClient

from api.context import ApiContext
from billing.payments.stripe_provider import StripeSettings
from tests.api.billing_support import DECEMBER, close_december, close_november, invoice_number, use_stripe
from tests.api.conftest import error_code, operator
from tests.billing.conftest import localstripe, stripe_client, stripe_settings  # noqa: F401 (fixtures)
from tests.billing.test_payments_stripe import VISA, card
from tests.quota.conftest import PinnedClock


def url(t: Any, tail: str = "") -> str:
    return f"/api/v1/accounts/{t.account_id}/invoices{tail}"


def test_list_and_detail_with_lines_tax_and_balance(client: TestClient, tenant: Any, ctx: ApiContext,
                                                    api_clock: PinnedClock) -> None:
    t = tenant("enterprise")
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    page = client.get(url(t), headers=t.h("viewer")).json()
    assert page["has_more"] is False and page["next_cursor"] is None
    [summary] = page["data"]
    issued = ctx.invoicer.get(number)
    assert summary == {"number": number, "period": issued["period"], "status": "open", "currency": "USD",
                       "subtotal_minor": issued["subtotal_minor"], "tax_minor": issued["tax"]["amount_minor"],
                       "total_minor": issued["total_minor"], "issued_at": issued["issued_at"],
                       "due_at": issued["due_at"], "paid_at": None}
    detail = client.get(url(t, f"/{number}"), headers=t.h("billing")).json()
    assert detail["lines"] == issued["lines"] and detail["lines"][-1]["kind"] == "subscription"
    assert sum(line["amount_minor"] for line in detail["lines"]) == detail["subtotal_minor"]
    assert detail["subtotal_minor"] + detail["tax"]["amount_minor"] == detail["total_minor"] > 0
    assert isinstance(detail["tax"]["rate"], str) and detail["customer"]["id"] == t.account_id
    assert detail["balance"] == {"total_minor": detail["total_minor"], "credited_minor": 0, "paid_minor": 0,
                                 "refunded_minor": 0, "due_minor": detail["total_minor"]}
    assert detail["payments"] == [] and detail["credit_notes"] == []


def test_pages_walk_every_invoice_newest_first(client: TestClient, tenant: Any, ctx: ApiContext,
                                               api_clock: PinnedClock) -> None:
    t = tenant("pro")
    close_november(ctx, api_clock)
    close_december(ctx, api_clock)
    first = client.get(url(t, "?limit=1"), headers=t.h()).json()
    assert first["has_more"] is True and first["data"][0]["period"] == DECEMBER
    second = client.get(url(t, f"?limit=1&starting_after={first['next_cursor']}"), headers=t.h()).json()
    assert second["has_more"] is False and [i["period"] for i in second["data"]] == [f"{DECEMBER[:4]}-11"]
    response = client.get(url(t, "?starting_after=AH-2000-000001"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "invalid_cursor"


def test_pdf_download(client: TestClient, tenant: Any, ctx: ApiContext, api_clock: PinnedClock) -> None:
    t = tenant("enterprise")
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    response = client.get(url(t, f"/{number}/pdf"), headers=t.h("viewer"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    assert f'filename="{number}.pdf"' in response.headers["content-disposition"]


def test_who_may_read_pay_and_void(client: TestClient, tenant: Any, ctx: ApiContext,
                                   api_clock: PinnedClock) -> None:
    t = tenant("enterprise")
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    detail, pay, void = url(t, f"/{number}"), url(t, f"/{number}/pay"), url(t, f"/{number}/void")
    for role in ("owner", "admin", "billing", "viewer"):
        assert client.get(detail, headers=t.h(role)).status_code == 200
    for path in (url(t), detail, detail + "/pdf"):
        response = client.get(path, headers=t.h("developer"))
        assert response.status_code == 403 and error_code(response) == "forbidden"
    for role in ("viewer", "developer"):
        assert client.post(pay, headers=t.h(role)).status_code == 403
    # billing may pay: past the permission, the account pays by bank transfer
    response = client.post(pay, headers=t.h("billing"))
    assert response.status_code == 409 and error_code(response) == "awaiting_bank_transfer"
    for role in ("owner", "admin", "billing"):
        assert client.post(void, headers=t.h(role)).status_code == 403
    voided = client.post(void, headers=operator())
    assert voided.status_code == 200 and voided.json()["status"] == "void"
    response = client.post(pay, headers=t.h("billing"))
    assert response.status_code == 409 and error_code(response) == "invoice_not_payable"


def test_void_a_paid_invoice_is_refused(client: TestClient, tenant: Any, ctx: ApiContext,
                                        api_clock: PinnedClock) -> None:
    t = tenant("pro")
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    ctx.payments.mark_paid_by_bank_transfer(number, "BANK-REF-1")
    response = client.post(url(t, f"/{number}/void"), headers=operator())
    assert response.status_code == 409 and error_code(response) == "invalid_transition"


def test_another_tenants_invoice_is_not_found(client: TestClient, tenant: Any, ctx: ApiContext,
                                              api_clock: PinnedClock) -> None:
    a, b = tenant("enterprise"), tenant("enterprise")
    close_november(ctx, api_clock)
    theirs = invoice_number(ctx, b.account_id)
    for tail in ("", f"/{theirs}", f"/{theirs}/pdf"):
        response = client.get(url(b, tail), headers=a.h())
        assert response.status_code == 404 and error_code(response) == "account_not_found"
    for path in (url(a, f"/{theirs}"), url(a, f"/{theirs}/pdf")):
        response = client.get(path, headers=a.h())
        assert response.status_code == 404 and error_code(response) == "invoice_not_found"
    for path in (url(a, f"/{theirs}/pay"), url(a, f"/{theirs}/void")):
        response = client.post(path, headers=operator() if path.endswith("void") else a.h())
        assert response.status_code == 404 and error_code(response) == "invoice_not_found"
    assert ctx.invoicer.get(theirs)["status"] == "open"
    response = client.get(url(a, "/AH-2000-999999"), headers=a.h())
    assert response.status_code == 404 and error_code(response) == "invoice_not_found"


def test_unauthenticated_and_bad_input(client: TestClient, tenant: Any, ctx: ApiContext,
                                       api_clock: PinnedClock) -> None:
    t = tenant("pro")
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    for method, path in (("GET", url(t)), ("GET", url(t, f"/{number}")), ("GET", url(t, f"/{number}/pdf")),
                         ("POST", url(t, f"/{number}/pay")), ("POST", url(t, f"/{number}/void"))):
        response = client.request(method, path)
        assert response.status_code == 401 and error_code(response) == "missing_token"
    response = client.get(url(t, "/not-a-number"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "invalid_value"
    assert response.json()["error"]["param"] == "number"
    response = client.get(url(t, "?limit=101"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "out_of_range"


def test_pay_now_charges_once(client: TestClient, tenant: Any, ctx: ApiContext, api_clock: PinnedClock,
                              stripe_settings: StripeSettings,  # noqa: F811
                              stripe_client: stripe.StripeClient) -> None:  # noqa: F811
    use_stripe(ctx, stripe_settings)
    t = tenant("pro")
    added = client.post(f"/api/v1/accounts/{t.account_id}/payment-methods", headers=t.h(),
                        json={"provider": "stripe", "payment_method": card(stripe_client, VISA)})
    assert added.status_code == 201, added.text
    close_november(ctx, api_clock)
    number = invoice_number(ctx, t.account_id)
    headers = {**t.h(), "Idempotency-Key": f"pay-{number}"}
    paid = client.post(url(t, f"/{number}/pay"), headers=headers)
    assert paid.status_code == 200, paid.text
    payment = paid.json()
    total = ctx.invoicer.get(number)["total_minor"]
    assert (payment["state"], payment["amount_minor"], payment["currency"]) == ("succeeded", total, "USD")
    assert payment["provider"] == "stripe" and payment["attempt"] == 1
    replay = client.post(url(t, f"/{number}/pay"), headers=headers)
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == payment
    again = client.post(url(t, f"/{number}/pay"), headers=t.h())       # no key: the payment made, not a second
    assert again.status_code == 200 and again.json()["id"] == payment["id"]
    assert len(ctx.payments.attempts(number)) == 1
    detail = client.get(url(t, f"/{number}"), headers=t.h()).json()
    assert detail["status"] == "paid" and detail["balance"]["due_minor"] == 0
    assert [p["id"] for p in detail["payments"]] == [payment["id"]]
    assert "idempotency_key" not in detail["payments"][0] and "cus_" not in str(detail)
