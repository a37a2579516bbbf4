"""Notifications over the management API: each delivery's state, attempts, last error and target (a URL without
its query string, never the signing secret), and sending a delivery again (owners and admins)."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from api.context import ApiContext
from billing.notifications import deliver_due
from tests.api.billing_support import FailingPoster, record_notification
from tests.api.conftest import error_code, operator
from tests.quota.conftest import YEAR

HOOK = "https://hooks.example.com/aihub?token=abc123"


def url(t: Any, tail: str = "") -> str:
    return f"/api/v1/accounts/{t.account_id}/notifications{tail}"


def webhook_url(t: Any) -> str:
    return f"/api/v1/accounts/{t.account_id}/settings/webhook"


def quota_warning(ctx: ApiContext, t: Any, level: int = 80) -> int:
    return record_notification(ctx, t.account_id, f"quota_{level}", f"quota_{level}:{YEAR}-11",
                               {"period": f"{YEAR}-11", "level": level, "used": 800, "limit": 1000})


def failed_webhook(client: TestClient, ctx: ApiContext, t: Any) -> tuple[int, dict[str, Any], str]:
    """A quota warning whose webhook delivery failed once (HTTP 500); (its id, the webhook delivery, secret)."""
    secret = client.post(webhook_url(t), headers=t.h(), json={"url": HOOK}).json()["webhook_secret"]
    notification_id = quota_warning(ctx, t)
    report = deliver_due(ctx.sessions, None, FailingPoster(500), now=ctx.now())
    assert report.failed == 1
    [shown] = client.get(url(t), headers=t.h()).json()["data"]
    [webhook] = [d for d in shown["deliveries"] if d["channel"] == "webhook"]
    return notification_id, webhook, secret


def test_deliveries_with_state_attempts_error_and_target(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise")
    notification_id, webhook, secret = failed_webhook(client, ctx, t)
    page = client.get(url(t), headers=t.h("viewer"))
    assert page.status_code == 200
    [shown] = page.json()["data"]
    assert (shown["id"], shown["kind"], shown["dedup_key"]) == (notification_id, "quota_80", f"quota_80:{YEAR}-11")
    assert shown["payload"]["level"] == 80
    email = next(d for d in shown["deliveries"] if d["channel"] == "email")
    assert (email["state"], email["attempts"], email["target"]) == ("pending", 0, f"billing@{t.account_id}.example")
    assert (webhook["state"], webhook["attempts"], webhook["last_error"]) == ("failed", 1, "HTTP 500")
    assert webhook["target"] == "https://hooks.example.com/aihub?..." and webhook["next_attempt_at"]
    assert secret not in page.text and "abc123" not in page.text


def test_redeliver_resets_to_pending_now(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise")
    notification_id, webhook, _ = failed_webhook(client, ctx, t)
    path = url(t, f"/{notification_id}/deliveries/{webhook['id']}/redeliver")
    for role in ("billing", "developer", "viewer"):
        response = client.post(path, headers=t.h(role))
        assert response.status_code == 403 and error_code(response) == "forbidden"
    response = client.post(path, headers=t.h("admin"))
    assert response.status_code == 200, response.text
    again = response.json()
    assert (again["id"], again["state"], again["attempts"]) == (webhook["id"], "pending", 0)
    assert again["next_attempt_at"] == ctx.now().isoformat().replace("+00:00", "Z")
    assert again["target"] == "https://hooks.example.com/aihub?..."
    poster = FailingPoster(204)
    assert deliver_due(ctx.sessions, None, poster, now=ctx.now()).delivered == 1
    assert [sent[0] for sent in poster.sent] == [HOOK]
    [shown] = client.get(url(t), headers=t.h()).json()["data"]
    assert next(d for d in shown["deliveries"] if d["id"] == webhook["id"])["state"] == "delivered"
    assert client.post(path, headers=t.h()).json()["state"] == "pending"        # a delivered one: once more


def test_redeliver_refusals(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    a, b = tenant("enterprise"), tenant("enterprise")
    notification_id, webhook, _ = failed_webhook(client, ctx, a)
    theirs = quota_warning(ctx, b)
    path = f"/{notification_id}/deliveries/{webhook['id']}/redeliver"
    response = client.post(url(b, path), headers=b.h())        # b's account, a's notification
    assert response.status_code == 404 and error_code(response) == "delivery_not_found"
    response = client.post(url(a, path), headers=b.h())        # a's account, b's token
    assert response.status_code == 404 and error_code(response) == "account_not_found"
    response = client.post(url(a, f"/{theirs}/deliveries/{webhook['id']}/redeliver"), headers=a.h())
    assert response.status_code == 404 and error_code(response) == "delivery_not_found"
    client.post(webhook_url(a), headers=a.h(), json={"url": None})
    response = client.post(url(a, path), headers=a.h())
    assert response.status_code == 409 and error_code(response) == "channel_off"
    for bad, code in (("/abc/deliveries/1/redeliver", "invalid_type"), ("/0/deliveries/1/redeliver", "out_of_range"),
                      (f"/1/deliveries/{2**31}/redeliver", "out_of_range")):
        response = client.post(url(a, bad), headers=a.h())
        assert response.status_code == 400 and error_code(response) == code, bad


def test_pages_newest_first(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise")
    ids = [quota_warning(ctx, t, 80), quota_warning(ctx, t, 100)]
    first = client.get(url(t, "?limit=1"), headers=t.h()).json()
    assert first["has_more"] is True and [n["id"] for n in first["data"]] == [ids[1]]
    second = client.get(url(t, f"?limit=1&starting_after={first['next_cursor']}"), headers=t.h()).json()
    assert second["has_more"] is False and [n["id"] for n in second["data"]] == [ids[0]]
    response = client.get(url(t, "?starting_after=999999"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "invalid_cursor"


def test_another_tenant_no_token_and_the_operator(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    a, b = tenant("enterprise"), tenant("enterprise")
    quota_warning(ctx, b)
    response = client.get(url(b), headers=a.h())
    assert response.status_code == 404 and error_code(response) == "account_not_found"
    for method, path in (("GET", url(b)), ("POST", url(b, "/1/deliveries/1/redeliver"))):
        response = client.request(method, path)
        assert response.status_code == 401 and error_code(response) == "missing_token"
    assert len(client.get(url(b), headers=operator()).json()["data"]) == 1
    assert client.get(url(a), headers=a.h("developer")).json()["data"] == []
    response = client.get("/api/v1/accounts/nosuchacct/notifications", headers=operator())
    assert response.status_code == 404 and error_code(response) == "account_not_found"
