"""The operator's views over the management API: the revenue report and this month's KPIs (the report's own
figures), usage anomalies from ClickHouse, the audit log; nobody else may read them."""

from __future__ import annotations

from datetime import date
from typing import Any

from starlette.testclient import TestClient

from api.context import ApiContext
from billing.reports import revenue_report
from billing_worker.migrate import migrate
from billing_worker.settings import Settings as WorkerSettings
from tests.api.conftest import error_code, operator
from tests.quota.conftest import YEAR, epoch

NOVEMBER = f"{YEAR}-11"
ROUTES = (f"/api/v1/reports/revenue?from={NOVEMBER}&to={NOVEMBER}", "/api/v1/reports/kpis",
          f"/api/v1/anomalies?period={NOVEMBER}", "/api/v1/audit-log")


def test_revenue_report_is_the_billing_report(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    tenant("pro")
    tenant("enterprise")
    response = client.get(f"/api/v1/reports/revenue?from={YEAR}-10&to={NOVEMBER}", headers=operator())
    assert response.status_code == 200, response.text
    body = response.json()
    expected = [m.to_dict() for m in revenue_report(ctx.accounts.sessions, ctx.accounts.catalog, f"{YEAR}-10",
                                                    NOVEMBER)]
    assert body == {"from": f"{YEAR}-10", "to": NOVEMBER, "months": expected}
    october, november = body["months"]
    assert october["currencies"]["USD"]["mrr_minor"] == 0
    assert november["currencies"]["USD"]["mrr_minor"] == 2900 + 9900
    assert november["currencies"]["USD"]["paying_accounts"] == 2 and november["accounts"]["paying_at_end"] == 2


def test_kpis_of_the_current_month(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    tenant("pro")
    tenant("enterprise")
    tenant("free")
    response = client.get("/api/v1/reports/kpis", headers=operator())
    assert response.status_code == 200, response.text
    kpis = response.json()
    assert (kpis["period"], kpis["as_of"]) == (NOVEMBER, f"{NOVEMBER}-25T12:00:00Z")
    assert (kpis["paying_accounts"], kpis["churned"], kpis["churn_pct"]) == (2, 0, None)
    assert (kpis["payment_attempts"], kpis["payment_success_rate_pct"]) == (0, None)
    assert kpis["currencies"]["USD"] == {"currency": "USD", "mrr_minor": 12800, "arr_minor": 12 * 12800,
                                         "paying_accounts": 2, "arpa_minor": 6400}
    assert all(c["arpa_minor"] is None for cur, c in kpis["currencies"].items() if cur != "USD")


def test_bad_report_ranges(client: TestClient) -> None:
    cases = [(f"from={NOVEMBER}&to={YEAR}-10", "bad_range", None), (f"from=2026-13&to={NOVEMBER}", "invalid_value",
                                                                    "from"),
             (f"to={NOVEMBER}", "missing_field", "from"), (f"from={NOVEMBER}", "missing_field", "to"),
             ("from=1990-01&to=2090-01", "invalid_value", "from"), ("from=2000-01&to=2099-12", "bad_range", None)]
    for query, code, param in cases:
        response = client.get(f"/api/v1/reports/revenue?{query}", headers=operator())
        assert response.status_code == 400 and error_code(response) == code, (query, response.text)
        assert response.json()["error"]["param"] == param
    response = client.get("/api/v1/anomalies?period=November", headers=operator())
    assert response.status_code == 400 and error_code(response) == "invalid_value"


def test_anomalies_from_usage_history(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("pro")
    calls = [10, 12, 8, 10, 10, 11, 9, 40, 10]           # November 1st to 9th: the 8th is 4x its week
    with ctx.clickhouse() as ch:
        migrate(ch, WorkerSettings().schema_dir)
        ch.insert_rows("usage_rows", ("rid", "acct", "period", "ts_start_ms", "ts_end_ms", "calls"),
                       [(f"req{day}", t.account_id, NOVEMBER, int(epoch(f"{NOVEMBER}-{day:02d}T12:00:00") * 1000),
                         int(epoch(f"{NOVEMBER}-{day:02d}T12:00:01") * 1000), n)
                        for day, n in enumerate(calls, 1)])
    response = client.get(f"/api/v1/anomalies?period={NOVEMBER}", headers=operator())
    assert response.status_code == 200, response.text
    assert response.json() == {"period": NOVEMBER, "data": [
        {"account": t.account_id, "day": date(YEAR, 11, 8).isoformat(), "calls": 40, "trailing_avg": 10.0,
         "ratio": 4.0}]}
    assert client.get("/api/v1/anomalies", headers=operator()).json()["period"] == NOVEMBER     # the current one
    other = client.get(f"/api/v1/anomalies?period={NOVEMBER}&account_id=someoneelse", headers=operator())
    assert other.json()["data"] == []
    assert client.get(f"/api/v1/anomalies?period={YEAR}-10", headers=operator()).json()["data"] == []


def test_anomalies_without_usage_history_is_503(client: TestClient, ctx: ApiContext) -> None:
    ctx.clickhouse_factory = None
    response = client.get("/api/v1/anomalies", headers=operator())
    assert response.status_code == 503 and error_code(response) == "usage_history_unavailable"


def test_audit_log_pages_newest_first(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    a, b = tenant("enterprise"), tenant("pro")
    client.patch(f"/api/v1/accounts/{a.account_id}/settings", headers=a.h(), json={"language": "zh"})
    everything = ctx.accounts.audit_log(None, 1000)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&starting_after={cursor}" if cursor else "")
        page = client.get(f"/api/v1/audit-log{query}", headers=operator()).json()
        seen += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == everything and len(seen) > 4
    newest = seen[0]
    assert (newest["action"], newest["account"], newest["actor"]) == (
        "account.language", a.account_id, f"member:{a.member_ids['owner']}")
    only_b = client.get(f"/api/v1/audit-log?account_id={b.account_id}&limit=100", headers=operator()).json()
    assert only_b["data"] and {e["account"] for e in only_b["data"]} == {b.account_id}
    assert "account.create" in {e["action"] for e in only_b["data"]}
    for query, status, code in (("?starting_after=abc", 400, "invalid_cursor"),
                                ("?account_id=nosuchacct", 404, "account_not_found"),
                                ("?account_id=NO", 400, "invalid_value"), ("?limit=0", 400, "out_of_range")):
        response = client.get(f"/api/v1/audit-log{query}", headers=operator())
        assert response.status_code == status and error_code(response) == code, query


def test_only_the_operator(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    for path in ROUTES:
        for role in ("owner", "admin", "billing", "developer", "viewer"):
            response = client.get(path, headers=t.h(role))
            assert response.status_code == 403 and error_code(response) == "forbidden", (path, role)
        response = client.get(path)
        assert response.status_code == 401 and error_code(response) == "missing_token"
