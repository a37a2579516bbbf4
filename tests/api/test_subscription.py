"""The subscription and boosts: reading it, the proration preview (docs/billing.md's example: Pro -> Enterprise on
the 20th of a 30-day month is Pro 19/30 x 29.00 = 18.37 and Enterprise 11/30 x 99.00 = 36.30), plan changes
(upgrade at once, downgrade at the period's end), cancel, custom quota, overage and boosts, with each role's
rights. The clock is pinned in November of tests.quota.conftest.YEAR (30 days)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from api.context import ApiContext
from tests.api.conftest import Tenant, bearer, error_code, operator
from tests.quota.conftest import YEAR, PinnedClock

NEXT_PERIOD = f"{YEAR}-12-01T00:00:00Z"
WRITES = [("POST", "/subscription", {"plan": "pro"}), ("POST", "/subscription/cancel", None),
          ("POST", "/subscription/cancel-scheduled", None), ("PUT", "/subscription/custom-quota", {"calls": None}),
          ("POST", "/subscription/overage", {"enabled": False}), ("POST", "/boosts", {"calls": 10, "days": 1}),
          ("POST", "/subscription/preview", {"plan": "pro"})]


@pytest.fixture
def from_the_first(api_clock: PinnedClock) -> PinnedClock:
    """Tenants made while this fixture's clock stands at the 1st exist for the whole month."""
    api_clock.set(f"{YEAR}-11-01T00:00:00")
    return api_clock


def url(t: Tenant, path: str) -> str:
    return f"/api/v1/accounts/{t.account_id}{path}"


def test_the_subscription_shows_plan_price_and_renewal(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    body = client.get(url(t, "/subscription"), headers=t.h()).json()
    assert (body["plan"], body["display_name"], body["price_minor"], body["currency"], body["included_calls"]) == \
        ("pro", "Pro", 2900, "USD", 5000)
    assert (body["custom_quota"], body["overage_enabled"], body["restricted"], body["scheduled_plan"]) == \
        (None, False, False, None)
    assert (body["period"], body["renews_at"], body["since"]) == (f"{YEAR}-11", NEXT_PERIOD, f"{YEAR}-11-25T12:00:00Z")


def test_preview_of_an_upgrade_prorates_by_days(client: TestClient, tenant: Any, from_the_first: PinnedClock) -> None:
    t = tenant("pro")
    from_the_first.set(f"{YEAR}-11-20T12:00:00")
    body = client.post(url(t, "/subscription/preview"), headers=t.h(), json={"plan": "enterprise"}).json()
    assert (body["change"], body["from_plan"], body["to_plan"], body["effective_at"]) == \
        ("upgrade", "pro", "enterprise", f"{YEAR}-11-20T12:00:00Z")
    assert [(x["quantity"], x["amount_minor"]) for x in body["without_change"]["lines"]] == [("30/30", 2900)]
    assert [(x["quantity"], x["unit_amount_minor"], x["amount_minor"]) for x in body["with_change"]["lines"]] == \
        [("19/30", 2900, 1837), ("11/30", 9900, 3630)]
    assert (body["without_change"]["total_minor"], body["with_change"]["total_minor"], body["difference_minor"]) \
        == (2900, 5467, 2567)
    assert body["next_period_price_minor"] == 9900 and body["payment_method_required"] is False
    assert body["with_change"]["tax"]["amount_minor"] == 0 and body["currency"] == "USD"
    # nothing changed
    assert client.get(url(t, "/subscription"), headers=t.h()).json()["plan"] == "pro"


def test_preview_of_a_downgrade_changes_nothing_this_month(client: TestClient, tenant: Any,
                                                           from_the_first: PinnedClock) -> None:
    t = tenant("enterprise")
    from_the_first.set(f"{YEAR}-11-10T00:00:00")
    body = client.post(url(t, "/subscription/preview"), headers=t.h("billing"), json={"plan": "pro"}).json()
    assert (body["change"], body["effective_at"], body["difference_minor"]) == ("downgrade", NEXT_PERIOD, 0)
    assert body["with_change"] == body["without_change"]
    assert body["with_change"]["total_minor"] == 9900 and body["next_period_price_minor"] == 2900
    same = client.post(url(t, "/subscription/preview"), headers=t.h(), json={"plan": "enterprise"}).json()
    assert (same["change"], same["effective_at"], same["difference_minor"]) == ("none", None, 0)


def test_preview_includes_a_bought_boost_and_the_tax(client: TestClient, ctx: ApiContext, tenant: Any,
                                                     from_the_first: PinnedClock) -> None:
    t = tenant("pro")
    ctx.accounts.set_location(t.account_id, "DE")
    assert client.post(url(t, "/boosts"), headers=t.h(), json={"calls": 300, "days": 5}).status_code == 201
    body = client.post(url(t, "/subscription/preview"), headers=t.h(), json={"plan": "enterprise"}).json()
    assert [(x["kind"], x["amount_minor"]) for x in body["without_change"]["lines"]] == \
        [("subscription", 2900), ("boost", 300)]
    without = body["without_change"]
    assert (without["subtotal_minor"], without["tax"]["rate"], without["tax"]["amount_minor"],
            without["total_minor"]) == (3200, "19", 608, 3808)              # 19 % German VAT on 32.00


def test_an_upgrade_is_at_once_and_a_downgrade_at_the_period_end(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    up = client.post(url(t, "/subscription"), headers=t.h(), json={"plan": "enterprise"})
    assert up.status_code == 200, up.text
    assert (up.json()["plan"], up.json()["scheduled_plan"], up.json()["projected"]) == ("enterprise", None, True)
    down = client.post(url(t, "/subscription"), headers=t.h(), json={"plan": "pro"}).json()
    assert (down["plan"], down["scheduled_plan"], down["scheduled_at"]) == ("enterprise", "pro", NEXT_PERIOD)
    again = client.post(url(t, "/subscription"), headers=t.h(), json={"plan": "enterprise"}).json()
    assert (again["plan"], again["scheduled_plan"]) == ("enterprise", None)       # the scheduled change is dropped


def test_cancel_and_cancel_scheduled(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    cancelled = client.post(url(t, "/subscription/cancel"), headers=t.h("admin")).json()
    assert (cancelled["plan"], cancelled["scheduled_plan"], cancelled["scheduled_at"]) == \
        ("enterprise", "free", NEXT_PERIOD)
    kept = client.post(url(t, "/subscription/cancel-scheduled"), headers=t.h("billing")).json()
    assert (kept["plan"], kept["scheduled_plan"], kept["scheduled_at"]) == ("enterprise", None, None)
    response = client.post(url(t, "/subscription/cancel-scheduled"), headers=t.h())
    assert response.status_code == 400 and error_code(response) == "nothing_scheduled"


def test_each_role_may_read_and_only_billing_roles_may_change(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    for role in t.tokens:
        assert client.get(url(t, "/subscription"), headers=t.h(role)).status_code == 200
        assert client.get(url(t, "/boosts"), headers=t.h(role)).status_code == 200
    for role in ("developer", "viewer"):
        for method, path, body in WRITES:
            response = client.request(method, url(t, path), headers=t.h(role), json=body)
            assert response.status_code == 403 and error_code(response) == "forbidden", (role, path)
    assert client.get(url(t, "/subscription"), headers=t.h()).json()["plan"] == "enterprise"
    changed = client.post(url(t, "/subscription"), headers=t.h("billing"), json={"plan": "pro"})
    assert changed.status_code == 200 and changed.json()["scheduled_plan"] == "pro"


def test_unauthenticated_and_another_tenant(client: TestClient, ctx: ApiContext, tenant: Any) -> None:
    t, other = tenant("pro"), tenant("enterprise")
    key = ctx.accounts.issue_key(t.account_id, "k")[0].api_key
    for method, path, body in [("GET", "/subscription", None), ("GET", "/boosts", None), *WRITES]:
        assert client.request(method, url(t, path), json=body).status_code == 401, path
        response = client.request(method, url(t, path), headers=other.h(), json=body)
        assert response.status_code == 404 and error_code(response) == "account_not_found", path
        response = client.request(method, url(t, path), headers=bearer(key), json=body)
        assert response.status_code == 403 and error_code(response) == "forbidden", path
    assert client.get(url(t, "/subscription"), headers=t.h()).json()["plan"] == "pro"


def test_a_paid_plan_needs_a_payment_method(client: TestClient, tenant: Any) -> None:
    t = tenant("free")
    preview = client.post(url(t, "/subscription/preview"), headers=t.h(), json={"plan": "pro"}).json()
    assert preview["change"] == "upgrade" and preview["payment_method_required"] is True
    response = client.post(url(t, "/subscription"), headers=t.h(), json={"plan": "pro"})
    assert response.status_code == 400 and error_code(response) == "payment_method_required"
    assert client.get(url(t, "/subscription"), headers=t.h()).json()["plan"] == "free"


def test_plan_change_input_is_checked(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    for path in ("/subscription", "/subscription/preview"):
        for body, code, param in (({"plan": "gold"}, "unknown_plan", "plan"),
                                  ({"plan": "Pro!"}, "invalid_value", "plan"), ({}, "missing_field", "plan"),
                                  ({"plan": 3}, "invalid_type", "plan"),
                                  ({"plan": "pro", "now": True}, "unknown_field", "now")):
            response = client.post(url(t, path), headers=t.h(), json=body)
            assert response.status_code == 400, (path, body, response.text)
            assert error_code(response) == code and response.json()["error"]["param"] == param


def test_a_plan_change_replays_with_its_idempotency_key(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    headers = {**t.h(), "Idempotency-Key": "upgrade-1"}
    first = client.post(url(t, "/subscription"), headers=headers, json={"plan": "enterprise"})
    again = client.post(url(t, "/subscription"), headers=headers, json={"plan": "enterprise"})
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    other = client.post(url(t, "/subscription"), headers=headers, json={"plan": "free"})
    assert other.status_code == 409 and error_code(other) == "idempotency_key_reused"


def test_custom_quota_changes_the_live_limit(client: TestClient, ctx: ApiContext, tenant: Any) -> None:
    t = tenant("pro")
    response = client.put(url(t, "/subscription/custom-quota"), headers=t.h(), json={"calls": 1000})
    assert response.status_code == 200 and response.json()["custom_quota"] == 1000
    assert client.get(url(t, "/usage/current"), headers=t.h()).json()["limit"] == 1000
    above = client.put(url(t, "/subscription/custom-quota"), headers=t.h(), json={"calls": 6000})
    assert above.status_code == 403 and error_code(above) == "custom_quota_above_plan"
    granted = client.put(url(t, "/subscription/custom-quota"), headers=operator(), json={"calls": 20000})
    assert granted.status_code == 200 and granted.json()["custom_quota"] == 20000
    assert client.get(url(t, "/usage/current"), headers=t.h()).json()["limit"] == 20000
    reset = client.put(url(t, "/subscription/custom-quota"), headers=t.h(), json={"calls": None}).json()
    assert reset["custom_quota"] is None
    assert client.get(url(t, "/usage/current"), headers=t.h()).json()["limit"] == 5000
    for body, code in (({"calls": -1}, "out_of_range"), ({"calls": "100"}, "invalid_type"), ({}, "missing_field"),
                       ({"calls": 10**13}, "out_of_range"), ({"calls": 1.5}, "invalid_type")):
        response = client.put(url(t, "/subscription/custom-quota"), headers=t.h(), json=body)
        assert response.status_code == 400 and error_code(response) == code, body
        assert response.json()["error"]["param"] == "calls"
    for plan in ("free", "enterprise"):
        other = tenant(plan)
        response = client.put(url(other, "/subscription/custom-quota"), headers=other.h(), json={"calls": 50})
        assert response.status_code == 400 and error_code(response) == "custom_quota_not_allowed", plan


def test_overage_on_and_off(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    on = client.post(url(t, "/subscription/overage"), headers=t.h(), json={"enabled": True})
    assert on.status_code == 200 and on.json()["overage_enabled"] is True
    assert client.get(url(t, "/usage/current"), headers=t.h()).json()["overage_enabled"] is True
    off = client.post(url(t, "/subscription/overage"), headers=t.h(), json={"enabled": False}).json()
    assert off["overage_enabled"] is False
    response = client.post(url(t, "/subscription/overage"), headers=t.h(), json={"enabled": "yes"})
    assert response.status_code == 400 and error_code(response) == "invalid_type"
    free = tenant("free")
    response = client.post(url(free, "/subscription/overage"), headers=free.h(), json={"enabled": True})
    assert response.status_code == 400 and error_code(response) == "overage_not_allowed"


def test_a_member_buys_a_boost_at_the_overage_price(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    headers = {**t.h(), "Idempotency-Key": "boost-1"}
    bought = client.post(url(t, "/boosts"), headers=headers, json={"calls": 500, "days": 3})
    assert bought.status_code == 201, bought.text
    boost = bought.json()
    assert (boost["calls"], boost["until"], boost["active"], boost["price_minor"], boost["currency"]) == \
        (500, f"{YEAR}-11-28T12:00:00Z", True, 500, "USD")             # 500 calls x 1 cent
    again = client.post(url(t, "/boosts"), headers=headers, json={"calls": 500, "days": 3})
    assert again.status_code == 201 and again.json()["id"] == boost["id"]
    listed = client.get(url(t, "/boosts"), headers=t.h()).json()
    assert [b["id"] for b in listed["data"]] == [boost["id"]] and listed["has_more"] is False
    assert client.get(url(t, "/usage/current"), headers=t.h()).json()["limit"] == 5500


def test_boost_rules(client: TestClient, tenant: Any, api_clock: PinnedClock) -> None:
    t = tenant("pro")
    cases = [({"calls": 10}, 400, "bad_boost", "days"),
             ({"calls": 10, "days": 1, "until": f"{YEAR}-11-28T00:00:00Z"}, 400, "bad_boost", "days"),
             ({"calls": 10, "days": 10}, 400, "bad_boost", "days"),                  # past the period's end
             ({"calls": 10, "until": f"{YEAR}-12-02T00:00:00Z"}, 400, "bad_boost", "until"),
             ({"calls": 10, "until": f"{YEAR}-11-01T00:00:00Z"}, 400, "bad_boost", None),   # in the past
             ({"calls": 10, "until": f"{YEAR}-11-28T00:00:00"}, 400, "invalid_value", "until"),  # no offset
             ({"calls": 0, "days": 1}, 400, "out_of_range", "calls"),
             ({"calls": 10, "days": 400}, 400, "out_of_range", "days"),
             ({"calls": 10, "days": 1, "price_minor": 0}, 403, "forbidden", "price_minor")]
    for body, status, code, param in cases:
        response = client.post(url(t, "/boosts"), headers=t.h(), json=body)
        assert response.status_code == status, (body, response.text)
        assert error_code(response) == code and response.json()["error"]["param"] == param, (body, response.text)
    for plan in ("free", "enterprise"):
        other = tenant(plan)
        response = client.post(url(other, "/boosts"), headers=other.h(), json={"calls": 10, "days": 1})
        assert response.status_code == 403 and error_code(response) == "plan_feature_unavailable", plan
    assert client.get(url(t, "/boosts"), headers=t.h()).json()["data"] == []


def test_the_operator_grants_boosts_free_or_at_a_price(client: TestClient, tenant: Any,
                                                        api_clock: PinnedClock) -> None:
    t = tenant("enterprise")
    free = client.post(url(t, "/boosts"), headers=operator(),
                       json={"calls": 1000, "until": f"{YEAR + 1}-01-15T00:00:00Z"})
    assert free.status_code == 201 and (free.json()["price_minor"], free.json()["currency"]) == (None, None)
    sold = client.post(url(t, "/boosts"), headers=operator(), json={"calls": 10, "days": 2, "price_minor": 999})
    assert (sold.json()["price_minor"], sold.json()["currency"]) == (999, "USD")
    api_clock.set(f"{YEAR}-11-30T00:00:00")
    listed = client.get(url(t, "/boosts"), headers=t.h("viewer")).json()["data"]
    assert [(b["calls"], b["active"]) for b in listed] == [(1000, True), (10, False)]
