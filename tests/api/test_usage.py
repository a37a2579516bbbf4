"""Usage routes: the live month from the gateway's Redis counters, the history and its CSV from ClickHouse, the
month-end forecast. The traffic is real: requests admitted and settled by the quota engine (admit.lua,
settle.lua) on the pinned clock, then drained into the migrated chDB by the worker's drain.

The scenario (`busy`): a Pro account created on November 1st (of tests.quota.conftest.YEAR, a 30-day month) with a
custom quota of 1,000 calls, pay-as-you-go overage on and a bought boost of 200 calls until the 20th: limit 1,200.
On the 2nd 25 requests x 16 calls of gpt-4o-mini, on the 10th 50 x 16 of gpt-4o-mini and 5 x 10 of gpt-4o: 1,250
calls, the last 50 past the limit (overage, 1 cent each). The clock then stands at the 11th, 00:00 (10 days in)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from api.context import ApiContext
from billing_worker.clickhouse import ClickHouse
from tests.api.conftest import Tenant, bearer, error_code, operator
from tests.api.usage_helpers import Calls, drain, send
from tests.quota.conftest import YEAR, PinnedClock

ROUTES = ("/usage/current", "/usage", "/usage.csv", "/usage/forecast")


@pytest.fixture
def busy(client: TestClient, ctx: ApiContext, tenant: Any, api_clock: PinnedClock, api_env: dict[str, str],
         tmp_path: Path) -> tuple[Tenant, str]:
    """The scenario of the module's description: (tenant, its API key)."""
    api_clock.set(f"{YEAR}-11-01T00:00:00")
    t = tenant("pro")
    base = f"/api/v1/accounts/{t.account_id}"
    assert client.put(f"{base}/subscription/custom-quota", headers=t.h(), json={"calls": 1000}).status_code == 200
    assert client.post(f"{base}/subscription/overage", headers=t.h(), json={"enabled": True}).status_code == 200
    bought = client.post(f"{base}/boosts", headers=t.h(), json={"calls": 200, "until": f"{YEAR}-11-20T00:00:00Z"})
    assert bought.status_code == 201 and bought.json()["price_minor"] == 200, bought.text
    key = ctx.accounts.issue_key(t.account_id, "ci")[0].api_key
    api_clock.set(f"{YEAR}-11-02T09:00:00")
    send(ctx, api_env["REDIS_URL"], tmp_path / "spool", key, Calls(25, 16))
    api_clock.set(f"{YEAR}-11-10T12:00:00")
    send(ctx, api_env["REDIS_URL"], tmp_path / "spool", key, Calls(50, 16), Calls(5, 10, model="gpt-4o"))
    assert drain(ctx, api_env["REDIS_URL"]) == 80
    api_clock.set(f"{YEAR}-11-11T00:00:00")
    return t, key


def test_current_usage_is_the_live_counters_against_the_limit(client: TestClient, busy: tuple[Tenant, str]) -> None:
    t, key = busy
    body = client.get(f"/api/v1/accounts/{t.account_id}/usage/current", headers=bearer(key)).json()
    assert body["period"] == f"{YEAR}-11" and body["resets_at"] == f"{YEAR}-12-01T00:00:00Z"
    assert (body["plan"], body["used"], body["reserved"], body["limit"], body["remaining"]) == ("pro", 1250, 0, 1200, 0)
    assert body["percent"] == "104.17"                       # 1,250 / 1,200, half-up to 2 places
    assert (body["overage_enabled"], body["overage_calls"], body["overage_minor"], body["currency"]) == \
        (True, 50, 50, "USD")                                  # 50 calls x 1 cent
    assert (body["prompt_tokens"], body["completion_tokens"]) == (80 * 100, 80 * 20)
    assert (body["list_cost"], body["list_cost_nanos"], body["list_cost_currency"]) == ("0.080000000", 80_000_000,
                                                                                          "USD")
    assert body["by_model"] == [
        {"model": "gpt-4o", "calls": 50, "prompt_tokens": 500, "completion_tokens": 100},
        {"model": "gpt-4o-mini", "calls": 1200, "prompt_tokens": 7500, "completion_tokens": 1500}]


def test_history_groups_by_day_and_model_with_exact_costs(client: TestClient, busy: tuple[Tenant, str]) -> None:
    t, key = busy
    url = f"/api/v1/accounts/{t.account_id}/usage"
    body = client.get(f"{url}?period={YEAR}-11&group_by=model,day", headers=t.h()).json()
    assert body["group_by"] == ["day", "model"] and body["list_cost_currency"] == "USD"
    got = [(line["day"], line["model"], line["requests"], line["calls"], line["overage_calls"], line["list_cost"])
           for line in body["data"]]
    assert got == [(f"{YEAR}-11-02", "gpt-4o-mini", 25, 400, 0, "0.025000000"),
                   (f"{YEAR}-11-10", "gpt-4o", 5, 50, 50, "0.005000000"),
                   (f"{YEAR}-11-10", "gpt-4o-mini", 50, 800, 0, "0.050000000")]
    assert all(line["key_id"] is None for line in body["data"])
    totals = body["totals"]
    assert (totals["requests"], totals["calls"], totals["overage_calls"], totals["list_cost"],
            totals["list_cost_nanos"]) == (80, 1250, 50, "0.080000000", 80_000_000)
    by_key = client.get(f"{url}?group_by=key", headers=bearer(key)).json()       # default period: this month
    assert by_key["period"] == f"{YEAR}-11"
    assert [(line["key_id"], line["calls"]) for line in by_key["data"]] == [(key.split("_")[2], 1250)]
    whole = client.get(f"{url}?group_by=", headers=t.h()).json()
    assert len(whole["data"]) == 1 and whole["data"][0]["day"] is None and whole["data"][0]["calls"] == 1250
    october = client.get(f"{url}?period={YEAR}-10", headers=t.h()).json()
    assert october["data"] == [] and october["totals"]["calls"] == 0 and october["totals"]["list_cost"] == \
        "0.000000000"


def test_csv_export_has_the_same_lines(client: TestClient, busy: tuple[Tenant, str]) -> None:
    t, _ = busy
    response = client.get(f"/api/v1/accounts/{t.account_id}/usage.csv?group_by=day,model", headers=t.h("owner"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="usage-{t.account_id}-{YEAR}-11.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["acct"], r["day"], r["model"], r["key_id"], r["calls"], r["overage_calls"], r["cost"]) for r in rows] \
        == [(t.account_id, f"{YEAR}-11-02", "gpt-4o-mini", "", "400", "0", "0.025000000"),
            (t.account_id, f"{YEAR}-11-10", "gpt-4o", "", "50", "50", "0.005000000"),
            (t.account_id, f"{YEAR}-11-10", "gpt-4o-mini", "", "800", "0", "0.050000000")]


def test_forecast_projects_the_month_and_its_invoice(client: TestClient, busy: tuple[Tenant, str]) -> None:
    t, key = busy
    body = client.get(f"/api/v1/accounts/{t.account_id}/usage/forecast", headers=bearer(key)).json()
    assert (body["period"], body["now"], body["plan"], body["currency"]) == (f"{YEAR}-11", f"{YEAR}-11-11T00:00:00Z",
                                                                             "pro", "USD")
    assert (body["elapsed_days"], body["days_in_period"], body["calls_so_far"], body["daily_run_rate"]) == \
        ("10.00", 30, 1250, "125.00")
    # 1,250 calls in 10 of 30 days: 3,750 at month end; 1,200 allowed (quota + boost), so 2,550 overage calls
    assert (body["demand_calls"], body["projected_calls"], body["allowance"], body["projected_overage_calls"]) == \
        (3750, 3750, 1200, 2550)
    assert [(line["kind"], line["quantity"], line["amount_minor"]) for line in body["lines"]] == \
        [("subscription", "30/30", 2900), ("overage", "2550", 2550), ("boost", "1", 200)]
    assert (body["subtotal_minor"], body["tax"]["amount_minor"], body["total_minor"]) == (5650, 0, 5650)
    assert (body["cost_so_far_minor"], body["projected_cost_minor"], body["list_cost_currency"]) == (8, 24, "USD")


def test_an_unlimited_plan_has_no_limit_and_every_role_and_the_key_may_read(
        client: TestClient, ctx: ApiContext, tenant: Any) -> None:
    t, other = tenant("enterprise"), tenant("pro")
    key = ctx.accounts.issue_key(t.account_id, "k")[0].api_key
    other_key = ctx.accounts.issue_key(other.account_id, "k")[0].api_key
    callers = [*(t.h(role) for role in t.tokens), bearer(key), operator()]
    for path in ROUTES:
        url = f"/api/v1/accounts/{t.account_id}{path}"
        for headers in callers:
            assert client.get(url, headers=headers).status_code == 200, (path, headers)
        assert client.get(url).status_code == 401
        for headers in (other.h(), bearer(other_key)):                 # another tenant's account: not found
            response = client.get(url, headers=headers)
            assert response.status_code == 404 and error_code(response) == "account_not_found"
    body = client.get(f"/api/v1/accounts/{t.account_id}/usage/current", headers=t.h("viewer")).json()
    assert (body["plan"], body["used"], body["limit"], body["remaining"], body["percent"]) == \
        ("enterprise", 0, None, None, None)
    forecast = client.get(f"/api/v1/accounts/{t.account_id}/usage/forecast", headers=t.h("viewer")).json()
    assert forecast["allowance"] is None and forecast["lines"][0]["unit_amount_minor"] == 9900
    response = client.get("/api/v1/accounts/nosuchacct/usage/current", headers=operator())
    assert response.status_code == 404 and error_code(response) == "account_not_found"


def test_bad_filters_are_400_with_code_and_param(client: TestClient, ctx: ApiContext, tenant: Any) -> None:
    t = tenant("pro")
    for path in ("/usage", "/usage.csv"):
        url = f"/api/v1/accounts/{t.account_id}{path}"
        for query, code, param in (("period=2028-13", "invalid_value", "period"),
                                   ("period=November", "invalid_value", "period"),
                                   ("group_by=week", "invalid_value", "group_by"),
                                   ("group_by=day;model", "invalid_value", "group_by"),
                                   (f"period={YEAR + 1}-01", "bad_period", "period")):
            response = client.get(f"{url}?{query}", headers=t.h())
            assert response.status_code == 400, (path, query, response.text)
            assert error_code(response) == code and response.json()["error"]["param"] == param


def test_unreachable_stores_are_503_not_500(client: TestClient, ctx: ApiContext, tenant: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    t = tenant("pro")
    monkeypatch.setattr(ctx, "clickhouse_factory", lambda: ClickHouse("http://127.0.0.1:1/", connect_timeout_s=0.2))
    for path in ("/usage", "/usage.csv", "/usage/forecast", f"/plans/compare?period={YEAR}-10"):
        response = client.get(f"/api/v1/accounts/{t.account_id}{path}", headers=t.h())
        assert response.status_code == 503 and error_code(response) == "usage_history_unavailable", path
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    monkeypatch.setattr(ctx.store, "redis", down)
    for method, path, body in (("GET", "/usage/current", None), ("GET", "/plans/compare", None),
                               ("POST", "/subscription/preview", {"plan": "enterprise"})):
        response = client.request(method, f"/api/v1/accounts/{t.account_id}{path}", headers=t.h(), json=body)
        assert response.status_code == 503 and error_code(response) == "usage_unavailable", path
    down.close()
