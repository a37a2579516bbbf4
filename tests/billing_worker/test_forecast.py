"""Month-end forecast (billing_worker.forecast, docs/billing.md "Reports"): usage rows in chDB for the first 10 days
of a 30-day month, accounts in the database, the clock pinned at the start of the 11th."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate as migrate_database
from billing.errors import NotFound
from billing.invoicing import Invoicer, Seller
from billing.tax import load_tax_table
from billing_worker.clickhouse import ClickHouse
from billing_worker.forecast import forecast
from billing_worker.migrate import migrate
from billing_worker.settings import Settings
from gateway.catalog import Catalog
from gateway.settings import ROOT
from tests.quota.conftest import PinnedClock

SELLER = Seller("AI Hub GmbH", "Example Str. 1, Berlin", "DE", "DE123456789")
NOW = datetime(2026, 11, 11, tzinfo=UTC)            # 10 whole days of November (30 days) have elapsed
DAY_MS = 86_400_000
NOV_1_MS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
COLUMNS = ("rid", "acct", "key_id", "plan", "model", "upstream", "period", "outcome", "ts_start_ms", "ts_end_ms",
           "status", "calls", "overage", "pt", "ct", "cached", "reasoning", "cost_nanos", "latency_ms", "stream_id")


@pytest.fixture
def db(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    migrate_database(engine)
    yield sessions(engine)
    engine.dispose()


@pytest.fixture
def service(db: sessionmaker[Session], catalog: Catalog) -> AccountService:
    return AccountService(db, None, catalog, PinnedClock("2026-10-15T08:00:00"))


def rows(acct: str, plan: str, first_day: int, days: int, per_day: int, calls: int = 10,
         cost_nanos: int = 1_000_000) -> list[list[object]]:
    """`per_day` rows of `calls` calls on each of `days` days from November `first_day`."""
    out: list[list[object]] = []
    for day in range(first_day - 1, first_day - 1 + days):
        for n in range(per_day):
            start = NOV_1_MS + day * DAY_MS + n * 1000
            out.append([f"{acct}-{day}-{n}", acct, "k1", plan, "gpt-4o-mini", "default", "2026-11", "ok", start,
                        start + 200, 200, calls, 0, 100, 20, 0, 0, cost_nanos, 200, f"{start}-0"])
    return out


@pytest.fixture
def accounts(service: AccountService, ch: ClickHouse) -> dict[str, str]:
    """pro1: Pro (DE consumer), pay-as-you-go on, 200 calls a day on Nov 1-10, and one row after `now`.
    free1: Free, 5 calls a day on Nov 1-10. cny1: Pro in CNY (CN), created Nov 6, overage off, 200 calls a day."""
    pro = str(service.create_account("Pro", "pro", country="DE", account_id="pro1").account["id"])
    service.set_overage(pro, True)
    free = str(service.create_account("Free", "free", country="JP", account_id="free1").account["id"])
    service.clock.set("2026-11-06T00:00:00")               # type: ignore[attr-defined]
    cny = str(service.create_account("Yuan", "pro", country="CN", currency="CNY", account_id="cny1")
              .account["id"])
    data = [*rows(pro, "pro", 1, 10, 20), *rows(free, "free", 1, 10, 1, calls=5), *rows(cny, "pro", 6, 5, 20),
            *rows(pro, "pro", 11, 1, 1, calls=200)]           # Nov 11, after `now`: not counted
    ch.insert_rows("usage_rows", COLUMNS, data)
    ch.insert_rows("usage_rows", COLUMNS, data[:50])        # replayed rows count once (FINAL)
    return {"pro": pro, "free": free, "cny": cny}


@pytest.fixture
def invoicer(db: sessionmaker[Session], catalog: Catalog) -> Invoicer:
    return Invoicer(db, catalog, load_tax_table(ROOT / "config" / "tax.toml"), SELLER, net_days=14)


def test_forecast_per_account_and_business(accounts: dict[str, str], invoicer: Invoicer, ch: ClickHouse) -> None:
    result = forecast(invoicer, ch, NOW)
    by_id = {a.account: a for a in result.accounts}
    assert result.period == "2026-11" and result.now == "2026-11-11T00:00:00Z" and result.cost_currency == "USD"

    pro = by_id["pro1"]
    # 2,000 calls in 10 of 30 days: 200 a day, 6,000 at month end (3x); quota 5,000, so 1,000 overage calls.
    assert (pro.calls_so_far, pro.elapsed_days, pro.daily_run_rate) == (2000, "10.00", "200.00")
    assert (pro.demand_calls, pro.projected_calls, pro.allowance, pro.projected_overage_calls) == (
        6000, 6000, 5000, 1000)
    # list cost: 200 rows x 1,000,000 nanos = 0.20 USD so far, 0.60 projected
    assert (pro.cost_so_far_minor, pro.projected_cost_minor) == (20, 60)
    assert [(line.kind, line.quantity, line.unit_amount_minor, line.amount_minor) for line in pro.lines] == [
        ("subscription", "30/30", 2900, 2900), ("overage", "1000", 1, 1000)]
    # DE consumer: 19 % of 39.00 = 7.41
    assert (pro.subtotal_minor, pro.tax["rate"], pro.tax["amount_minor"], pro.total_minor) == (3900, "19", 741, 4641)

    free = by_id["free1"]
    # 50 calls in 10 days -> 150 wanted, but Free stops at its 100 included calls.
    assert (free.calls_so_far, free.demand_calls, free.projected_calls, free.projected_overage_calls) == (
        50, 150, 100, 0)
    assert [(line.kind, line.amount_minor) for line in free.lines] == [("subscription", 0)] and free.total_minor == 0

    cny = by_id["cny1"]
    # created Nov 6: 5 days elapsed, 25 active days; 1,000 calls -> 5,000, capped at the quota (overage off).
    assert (cny.elapsed_days, cny.calls_so_far, cny.demand_calls, cny.projected_calls) == ("5.00", 1000, 5000, 5000)
    # 25/30 of 199.00 = 165.833 -> 165.83; China 6 % = 9.9498 -> 9.95
    assert [(line.kind, line.quantity, line.amount_minor) for line in cny.lines] == [("subscription", "25/30", 16583)]
    assert (cny.tax["amount_minor"], cny.total_minor) == (995, 17578)

    usd, yuan = result.business["USD"], result.business["CNY"]
    assert (usd.accounts, usd.calls_so_far, usd.projected_calls) == (2, 2050, 6100)
    assert (usd.subscription_minor, usd.overage_minor, usd.subtotal_minor, usd.tax_minor, usd.total_minor) == (
        2900, 1000, 3900, 741, 4641)
    assert (yuan.accounts, yuan.subtotal_minor, yuan.tax_minor, yuan.total_minor) == (1, 16583, 995, 17578)
    assert result.projected_cost_minor == 60 + nanos(10 * 3) + nanos(100 * 5)


def nanos(rows_count: int) -> int:
    """Projected list cost in minor units of `rows_count` projected rows at 1,000,000 nanos each."""
    return rows_count * 1_000_000 // 10**7


def test_forecast_one_account_and_unknown(accounts: dict[str, str], invoicer: Invoicer, ch: ClickHouse) -> None:
    result = forecast(invoicer, ch, NOW, accounts["pro"])
    assert [a.account for a in result.accounts] == ["pro1"] and list(result.business) == ["USD"]
    assert result.to_dict()["accounts"][0]["lines"][1] == {
        "kind": "overage", "description": "Pay-as-you-go calls over the Pro quota", "quantity": "1000",
        "unit_amount_minor": 1, "amount_minor": 1000}
    with pytest.raises(NotFound):
        forecast(invoicer, ch, NOW, "nobody1")


def test_cli_report_forecast(redis_url: str, database_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Catalog) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    engine = make_engine(database_url)
    migrate_database(engine)
    service = AccountService(sessions(engine), None, catalog, PinnedClock("2026-10-15T08:00:00"))
    service.create_account("Pro", "pro", country="JP", account_id="pro1", overage=True)
    engine.dispose()
    with ClickHouse(settings.clickhouse_url) as client:       # closed before the CLI opens the embedded chDB
        migrate(client, settings.schema_dir)
        client.insert_rows("usage_rows", COLUMNS, rows("pro1", "pro", 1, 10, 20))
    from gateway.cli import main
    assert main(["report", "forecast", "--at", "2026-11-11T00:00:00", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [pro] = report["accounts"]
    assert (pro["projected_calls"], pro["total_minor"]) == (6000, 3900)
    assert report["business"]["USD"]["total_minor"] == 3900
    assert main(["report", "forecast", "--at", "2026-11-11", "--account", "pro1"]) == 0
    assert "projected_calls: 6000" in capsys.readouterr().out
    assert main(["report", "forecast", "--account", "nobody1"]) == 2
