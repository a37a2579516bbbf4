"""The plan catalog and the per-plan cost of an account's month (billing/pricing.py's prices, config/catalog.toml:
Free 0 with 100 calls and a hard stop, Pro 29.00 USD / 199.00 CNY with 5,000 calls and 0.01 USD / 0.07 CNY per
overage call, Enterprise 99.00 USD / 699.00 CNY unlimited)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from api.context import ApiContext
from tests.api.conftest import bearer, error_code, operator
from tests.api.usage_helpers import Calls, insert_rows, send
from tests.quota.conftest import YEAR, PinnedClock


def _costs(body: dict[str, Any]) -> dict[str, tuple[int, int, int, int, bool]]:
    return {p["plan"]: (p["subscription_minor"], p["overage_calls"], p["overage_minor"], p["refused_calls"], p["fits"])
            for p in body["plans"]}


def test_the_catalog_lists_prices_limits_models_and_features(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    body = client.get("/api/v1/plans", headers=t.h("viewer")).json()
    assert body["currencies"] == ["CNY", "USD"] and body["version"]
    plans = {p["name"]: p for p in body["data"]}
    assert list(plans) == ["free", "pro", "enterprise"]
    pro = plans["pro"]
    assert (pro["display_name"], pro["prices_minor"], pro["included_calls"], pro["overage_prices_minor"]) == \
        ("Pro", {"USD": 2900, "CNY": 19900}, 5000, {"USD": 1, "CNY": 7})
    assert (pro["rate_per_minute"], pro["burst"], pro["max_calls_per_request"], pro["max_output_tokens"]) == \
        (600, 50, 16, 16384)
    assert pro["features"] == {"custom_quota": True, "pay_as_you_go": True, "teams": False, "support": "priority"}
    assert "gpt-4o" in pro["models"] and "o3-mini" not in pro["models"]
    free, enterprise = plans["free"], plans["enterprise"]
    assert free["prices_minor"] == {"USD": 0, "CNY": 0} and free["overage"] == "hard"
    assert free["overage_prices_minor"] == {} and free["models"] == sorted(free["models"])
    assert "gpt-4o" not in free["models"] and "gpt-4o-mini" in free["models"]
    assert (enterprise["included_calls"], enterprise["unlimited_calls"], enterprise["max_output_tokens"]) == \
        (None, True, None)
    assert enterprise["features"]["teams"] and not enterprise["features"]["custom_quota"]
    assert "o3-mini" in enterprise["models"]
    assert client.get("/api/v1/plans", headers=operator()).status_code == 200


def test_the_catalog_needs_a_member_or_the_operator(client: TestClient, ctx: ApiContext, tenant: Any) -> None:
    t = tenant("pro")
    assert client.get("/api/v1/plans").status_code == 401
    key = ctx.accounts.issue_key(t.account_id, "k")[0].api_key
    response = client.get("/api/v1/plans", headers=bearer(key))            # an API key reads usage only
    assert response.status_code == 403 and error_code(response) == "forbidden"


def test_compare_prices_a_past_month_from_the_history(client: TestClient, ctx: ApiContext, tenant: Any,
                                                       api_clock: PinnedClock) -> None:
    api_clock.set(f"{YEAR}-10-01T00:00:00")
    t = tenant("pro")
    insert_rows(ctx, t.account_id, "pro", f"{YEAR}-10-03", rows=21, calls=250)       # 5,250 calls in October
    insert_rows(ctx, "someoneelse", "pro", f"{YEAR}-10-03", rows=5, calls=250)       # not this account's
    api_clock.set(f"{YEAR}-11-25T12:00:00")
    body = client.get(f"/api/v1/accounts/{t.account_id}/plans/compare?period={YEAR}-10", headers=t.h()).json()
    assert (body["period"], body["calls"], body["source"], body["currency"], body["current_plan"]) == \
        (f"{YEAR}-10", 5250, "history", "USD", "pro")
    assert _costs(body) == {"free": (0, 0, 0, 5150, False),       # a hard stop at 100 calls
                            "pro": (2900, 250, 250, 0, True),     # 29.00 + 250 x 0.01
                            "enterprise": (9900, 0, 0, 0, True)}
    assert {p["plan"]: p["total_minor"] for p in body["plans"]} == {"free": 0, "pro": 3150, "enterprise": 9900}
    assert body["cheapest"] == "pro" and [p["plan"] for p in body["plans"] if p["current"]] == ["pro"]
    pro = next(p for p in body["plans"] if p["plan"] == "pro")
    assert [(line["kind"], line["quantity"], line["unit_amount_minor"]) for line in pro["lines"]] == \
        [("subscription", "31/31", 2900), ("overage", "250", 1)]


def test_compare_in_another_currency(client: TestClient, ctx: ApiContext, api_clock: PinnedClock) -> None:
    api_clock.set(f"{YEAR}-10-01T00:00:00")
    ctx.accounts.create_account("Yuan", "free", account_id="yuan0001", currency="CNY", country="CN")
    owner = ctx.members.add_member("yuan0001", "owner@yuan.example", "owner").token
    insert_rows(ctx, "yuan0001", "free", f"{YEAR}-10-03", rows=21, calls=250)
    api_clock.set(f"{YEAR}-11-02T00:00:00")
    body = client.get(f"/api/v1/accounts/yuan0001/plans/compare?period={YEAR}-10", headers=bearer(owner)).json()
    assert body["currency"] == "CNY"
    assert {p["plan"]: p["total_minor"] for p in body["plans"]} == {"free": 0, "pro": 19900 + 250 * 7,
                                                                     "enterprise": 69900}
    assert body["cheapest"] == "pro"


def test_compare_this_month_uses_the_live_counters(client: TestClient, ctx: ApiContext, tenant: Any,
                                                    api_env: dict[str, str], tmp_path: Path) -> None:
    t = tenant("free")
    key = ctx.accounts.issue_key(t.account_id, "k")[0].api_key
    send(ctx, api_env["REDIS_URL"], tmp_path / "spool", key, Calls(30, 3))           # 90 calls, not drained
    body = client.get(f"/api/v1/accounts/{t.account_id}/plans/compare", headers=t.h()).json()
    assert (body["period"], body["calls"], body["source"]) == (f"{YEAR}-11", 90, "live")
    assert _costs(body)["free"] == (0, 0, 0, 0, True) and body["cheapest"] == "free"


def test_compare_rights_and_bad_input(client: TestClient, ctx: ApiContext, tenant: Any) -> None:
    t, other = tenant("enterprise"), tenant("pro")
    url = f"/api/v1/accounts/{t.account_id}/plans/compare"
    for role in t.tokens:
        assert client.get(url, headers=t.h(role)).status_code == 200, role
    assert client.get(url).status_code == 401
    response = client.get(url, headers=other.h())
    assert response.status_code == 404 and error_code(response) == "account_not_found"
    key = ctx.accounts.issue_key(t.account_id, "k")[0].api_key
    assert error_code(client.get(url, headers=bearer(key))) == "forbidden"
    for query, code in (("period=2028-1", "invalid_value"), (f"period={YEAR}-12", "bad_period")):
        response = client.get(f"{url}?{query}", headers=t.h())
        assert response.status_code == 400 and error_code(response) == code
        assert response.json()["error"]["param"] == "period"
