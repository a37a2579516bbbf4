from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

import orjson
import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.errors import InvalidArgument
from billing_worker.export import export_usage
from billing_worker.money import format_money, nanos_to_decimal
from billing_worker.quota_counters import ModelCounters, current_usage
from billing_worker.rollup import refresh_daily_rollup
from billing_worker.settings import Settings
from billing_worker.usage_queries import (
    account_totals,
    cost_by_model,
    top_models,
    usage_by_day,
    usage_by_key,
    usage_lines,
)
from gateway.keys import AccountKeys
from tests.billing_worker.usage_factory import DAY_MS, NOV_1_2026_MS, make_entry, write_entries


@pytest.fixture
def loaded(r: redis.Redis, ch: ClickHouse, settings: Settings) -> ClickHouse:
    """Two accounts, November plus one October row, everything drained twice over (replayed)."""
    entries = [
        make_entry(1, acct="a1", key="k1", model="m-big", pt=1000, ct=500, cost_nanos=2_500_000_001),
        make_entry(2, acct="a1", key="k1", model="m-big", pt=10, ct=5, cost_nanos=3, ts_start_ms=NOV_1_2026_MS),
        make_entry(3, acct="a1", key="k2", model="m-small", pt=1, ct=1, cost_nanos=7, overage=1,
                   ts_start_ms=NOV_1_2026_MS + DAY_MS),
        make_entry(4, acct="a1", key="k2", model="m-small", calls=0, pt=0, ct=0, cost_nanos=0, outcome="upstream_error",
                   status=502, ts_start_ms=NOV_1_2026_MS + DAY_MS),
        make_entry(5, acct="a2", key="k9", model="m-small", pt=3, ct=4, cost_nanos=11),
        make_entry(6, acct="a1", key="k1", model="m-big", period="2026-10", ts_start_ms=NOV_1_2026_MS - DAY_MS),
    ]
    write_entries(r, entries)
    drain_once(r, ch, settings)
    write_entries(r, entries)  # replayed: must not change any figure
    drain_once(r, ch, settings)
    return ch


def test_totals_per_account_with_money_as_decimal(loaded: ClickHouse) -> None:
    a1, a2 = account_totals(loaded, "2026-11")
    assert (a1.acct, a1.requests, a1.calls, a1.overage_calls, a1.pt, a1.ct) == ("a1", 4, 3, 1, 1011, 506)
    assert a1.cost_nanos == 2_500_000_011 and a1.cost == Decimal("2.500000011")
    assert (a2.acct, a2.calls, a2.cost) == ("a2", 1, Decimal("1.1E-8"))
    assert account_totals(loaded, "2026-11", "a2") == [a2]
    assert account_totals(loaded, "2026-12") == []


def test_by_model_day_and_key(loaded: ClickHouse) -> None:
    models = cost_by_model(loaded, "2026-11", "a1")
    assert [(x.model, x.calls, x.cost_nanos) for x in models] == [("m-big", 2, 2_500_000_004), ("m-small", 1, 7)]
    days = usage_by_day(loaded, "2026-11", "a1")
    assert [(x.day, x.calls) for x in days] == [(date(2026, 11, 1), 1), (date(2026, 11, 2), 2)]
    keys = usage_by_key(loaded, "2026-11")
    assert [(x.acct, x.key_id, x.calls) for x in keys] == [("a1", "k1", 2), ("a1", "k2", 1), ("a2", "k9", 1)]
    full = usage_lines(loaded, "2026-11", acct="a1")
    assert sum(x.calls for x in full) == 3 and all(x.day and x.model and x.key_id for x in full)


def test_top_models(loaded: ClickHouse) -> None:
    assert top_models(loaded, "2026-11") == [("m-big", 2, 1515, Decimal("2.500000004")),
                                            ("m-small", 2, 9, Decimal("1.8E-8"))]
    assert top_models(loaded, "2026-11", order_by="tokens", limit=1)[0][0] == "m-big"


def test_bad_arguments_are_refused(loaded: ClickHouse) -> None:
    with pytest.raises(InvalidArgument, match="period"):
        account_totals(loaded, "2026-1")
    with pytest.raises(InvalidArgument, match="group by"):
        usage_lines(loaded, "2026-11", by=("plan",))
    with pytest.raises(InvalidArgument, match="order by"):
        top_models(loaded, "2026-11", order_by="acct; DROP TABLE usage_rows")
    assert account_totals(loaded, "2026-11", "a1'; --") == []  # parameters are bound, never spliced


def test_export_csv_and_json(loaded: ClickHouse) -> None:
    out = io.StringIO()
    assert export_usage(loaded, "2026-11", "csv", out, by=("model",)) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0] == {"acct": "a1", "day": "", "model": "m-big", "key_id": "", "requests": "2", "calls": "2",
                       "overage_calls": "0", "pt": "1010", "ct": "505", "cached": "1", "reasoning": "0",
                       "cost_nanos": "2500000004", "cost": "2.500000004"}
    out = io.StringIO()
    assert export_usage(loaded, "2026-11", "json", out, acct="a2") == 1
    record, = orjson.loads(out.getvalue())
    assert record["day"] == "2026-11-06" and record["cost"] == "0.000000011" and record["cost_nanos"] == 11
    with pytest.raises(InvalidArgument):
        export_usage(loaded, "2026-11", "xml", io.StringIO())


def test_daily_rollup_matches_the_rows_and_is_idempotent(loaded: ClickHouse) -> None:
    groups = refresh_daily_rollup(loaded, "2026-11")
    assert refresh_daily_rollup(loaded, "2026-11") == groups == len(usage_lines(loaded, "2026-11"))
    rolled = loaded.query("SELECT sum(calls), sum(cost_nanos), sum(requests) FROM usage_daily FINAL "
                          "WHERE period = '2026-11'")
    assert rolled == [(4, 2_500_000_022, 5)]


def test_money_helpers() -> None:
    assert nanos_to_decimal(1_234_500_000) == Decimal("1.2345")
    assert format_money(1_234_500_000) == "1.234500000"
    assert format_money(1_234_567_891, places=2) == "1.23"
    assert format_money(5, places=2) == "0.00"


def test_current_period_from_redis_counters(r: redis.Redis) -> None:
    key = AccountKeys("acct7", 16).quota("2026-11")
    assert key.startswith("{s:") and key.endswith(":a:acct7:q:2026-11")
    r.hset(key, mapping={"used": 12, "reserved": 2, "overage": 1, "pt": 900, "ct": 80, "cached": 5, "reasoning": 3,
                         "m:gpt-4o:calls": 10, "m:gpt-4o:pt": 800, "m:gpt-4o:ct": 70, "m:llama3:70b:calls": 2,
                         "m:llama3:70b:pt": 100, "m:llama3:70b:ct": 10, "warn80": 1})
    usage = current_usage(r, "acct7", "2026-11", 16)
    assert (usage.used, usage.reserved, usage.overage, usage.pt, usage.ct, usage.cached, usage.reasoning) == (
        12, 2, 1, 900, 80, 5, 3)
    assert usage.models == {"gpt-4o": ModelCounters(10, 800, 70), "llama3:70b": ModelCounters(2, 100, 10)}
    assert current_usage(r, "nobody", "2026-11", 16).used == 0
