"""Account settings over the management API: read by every member, changed by owners, admins and billing; every
field checked before anything changes; the webhook's signing secret shown once."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from api.context import ApiContext
from tests.api.conftest import error_code, operator


def url(t: Any, tail: str = "") -> str:
    return f"/api/v1/accounts/{t.account_id}/settings{tail}"


def test_read_and_change_settings(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise")
    shown = client.get(url(t), headers=t.h("viewer")).json()
    assert shown == {"account": t.account_id, "billing_email": f"billing@{t.account_id}.example", "language": "en",
                     "tax_id": None, "country": "US", "region": "", "currency": "USD", "overage": False,
                     "warning_levels": [80, 100], "webhook_url": None}
    change = {"billing_email": "ap@example.de", "language": "zh", "tax_id": "DE123456789", "country": "de",
              "warning_levels": [100, 100]}
    response = client.patch(url(t), headers=t.h("billing"), json=change)
    assert response.status_code == 200, response.text
    assert response.json() == {**shown, "billing_email": "ap@example.de", "language": "zh", "tax_id": "DE123456789",
                               "country": "DE", "warning_levels": [100]}
    assert client.get(url(t), headers=t.h()).json() == response.json()
    account = ctx.accounts.get_account(t.account_id)
    assert (account["billing_email"], account["language"], account["country"]) == ("ap@example.de", "zh", "DE")
    actions = {e["action"] for e in ctx.accounts.audit_log(t.account_id)}
    assert {"account.billing_email", "account.tax_id", "account.location", "account.language",
            "notifications.levels"} <= actions
    cleared = client.post(url(t), headers=t.h("admin"), json={"tax_id": None, "region": "by"})   # POST: the same
    assert cleared.status_code == 200 and (cleared.json()["tax_id"], cleared.json()["region"]) == (None, "BY")
    moved = client.patch(url(t), headers=t.h(), json={"country": "US"}).json()
    assert (moved["country"], moved["region"]) == ("US", "")          # a new country drops the old region


def test_overage_on_a_plan_that_offers_it(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    response = client.patch(url(t), headers=t.h(), json={"overage": True})
    assert response.status_code == 200 and response.json()["overage"] is True
    assert client.patch(url(t), headers=t.h(), json={"overage": False}).json()["overage"] is False


def test_a_refused_field_changes_nothing(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    before = client.get(url(t), headers=t.h()).json()
    cases = [({"billing_email": "ok@example.com", "overage": True}, "overage_not_allowed", None),
             ({"language": "zh", "billing_email": "not-an-email"}, "bad_email", None),
             ({"language": "zh", "tax_id": "!"}, "bad_tax_id", None),
             ({"language": "zh", "warning_levels": [50]}, "bad_warning_levels", None),
             ({"warning_levels": [0]}, "out_of_range", "warning_levels.0"),
             ({"warning_levels": [101]}, "out_of_range", "warning_levels.0"),
             ({"warning_levels": ["80"]}, "invalid_type", "warning_levels.0"),
             ({"overage": "yes"}, "invalid_type", "overage"),
             ({"language": "fr"}, "invalid_value", "language"),
             ({"country": "D1"}, "invalid_value", "country"),
             ({"currency": "EUR"}, "unknown_field", "currency")]
    for body, code, param in cases:
        response = client.patch(url(t), headers=t.h(), json=body)
        assert response.status_code == 400, (body, response.text)
        assert error_code(response) == code and response.json()["error"]["param"] == param, body
    assert client.get(url(t), headers=t.h()).json() == before


def test_webhook_secret_is_shown_once(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise")
    hook = "https://hooks.example.com/aihub?token=abc123"
    headers = {**t.h("billing"), "Idempotency-Key": "webhook-1"}
    response = client.post(url(t, "/webhook"), headers=headers, json={"url": hook})
    assert response.status_code == 200, response.text
    secret = response.json()["webhook_secret"]
    assert secret.startswith("whsec_") and response.json()["webhook_url"] == "https://hooks.example.com/aihub?..."
    replay = client.post(url(t, "/webhook"), headers=headers, json={"url": hook})
    assert replay.headers["idempotent-replayed"] == "true" and replay.json()["webhook_secret"] is None
    shown = client.get(url(t), headers=t.h("viewer"))
    assert shown.json()["webhook_url"] == "https://hooks.example.com/aihub?..."
    assert secret not in shown.text and "abc123" not in shown.text
    rotated = client.post(url(t, "/webhook"), headers=t.h(), json={"url": "https://hooks.example.com/v2"}).json()
    assert rotated["webhook_secret"].startswith("whsec_") and rotated["webhook_secret"] != secret
    off = client.post(url(t, "/webhook"), headers=t.h(), json={"url": None}).json()
    assert off == {"webhook_url": None, "webhook_secret": None}
    assert client.get(url(t), headers=t.h()).json()["webhook_url"] is None


def test_bad_webhook_urls(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    for body, code in (({"url": "ftp://hooks.example.com/x"}, "bad_webhook_url"),
                       ({"url": "http://127.0.0.1/hook"}, "bad_webhook_url"),
                       ({"url": "https://user:pw@hooks.example.com/"}, "bad_webhook_url"),
                       ({"url": "https://" + "a" * 2000 + ".com"}, "out_of_range"),
                       ({}, "missing_field"), ({"url": 5}, "invalid_type")):
        response = client.post(url(t, "/webhook"), headers=t.h(), json=body)
        assert response.status_code == 400 and error_code(response) == code, (body, response.text)


def test_who_may_change_settings(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    for role in ("owner", "admin", "billing", "developer", "viewer"):
        assert client.get(url(t), headers=t.h(role)).status_code == 200
    for role in ("developer", "viewer"):
        for method, path, body in (("PATCH", url(t), {"language": "zh"}), ("POST", url(t), {"language": "zh"}),
                                   ("POST", url(t, "/webhook"), {"url": None})):
            response = client.request(method, path, headers=t.h(role), json=body)
            assert response.status_code == 403 and error_code(response) == "forbidden"
    assert client.patch(url(t), headers=operator(), json={"language": "zh"}).json()["language"] == "zh"


def test_another_tenant_and_no_token(client: TestClient, tenant: Any) -> None:
    a, b = tenant("enterprise"), tenant("enterprise")
    for method, path, body in (("GET", url(b), None), ("PATCH", url(b), {"language": "zh"}),
                               ("POST", url(b), {"language": "zh"}), ("POST", url(b, "/webhook"), {"url": None})):
        response = client.request(method, path, headers=a.h(), json=body)
        assert response.status_code == 404 and error_code(response) == "account_not_found"
        response = client.request(method, path, json=body)
        assert response.status_code == 401 and error_code(response) == "missing_token"
    assert client.get(url(b), headers=b.h()).json()["language"] == "en"
    response = client.get("/api/v1/accounts/nosuchacct/settings", headers=operator())
    assert response.status_code == 404 and error_code(response) == "account_not_found"
