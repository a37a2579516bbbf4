from __future__ import annotations

from datetime import date, timedelta

import pytest
import redis

from billing_worker.anomalies import Anomaly, flag_anomalies, usage_anomalies
from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.errors import InvalidArgument
from billing_worker.settings import Settings
from tests.billing_worker.usage_factory import DAY_MS, NOV_1_2026_MS, make_entry, write_entries

D0 = date(2026, 11, 1)


def series(acct: str, calls: list[int], start: date = D0) -> list[tuple[str, date, int]]:
    return [(acct, start + timedelta(days=i), c) for i, c in enumerate(calls) if c]


def test_spike_over_three_times_the_trailing_week_is_flagged() -> None:
    rows = series("a", [10, 12, 8, 10, 10, 11, 9, 31, 10])
    assert flag_anomalies(rows) == [Anomaly("a", D0 + timedelta(days=7), 31, 10.0, 3.1)]
    assert flag_anomalies(rows, factor=4) == []


def test_quiet_days_count_as_zero_but_no_history_is_no_baseline() -> None:
    assert flag_anomalies(series("new", [500])) == []  # first day ever: nothing to compare with
    rows = series("b", [14, 0, 0, 0, 0, 0, 0, 20])  # average over 7 days = 2
    assert [a.day for a in flag_anomalies(rows)] == [D0 + timedelta(days=7)]
    assert flag_anomalies(rows, min_calls=25) == []


def test_each_account_has_its_own_baseline_and_report_window() -> None:
    rows = series("small", [1, 1, 1, 1, 1, 1, 1, 12]) + series("big", [100] * 8)
    found = flag_anomalies(rows, first_day=D0 + timedelta(days=7))
    assert [(a.acct, a.calls) for a in found] == [("small", 12)]
    assert flag_anomalies(rows, first_day=D0 + timedelta(days=8)) == []
    with pytest.raises(InvalidArgument):
        flag_anomalies(rows, factor=0)


def test_anomalies_from_clickhouse_reach_back_into_the_previous_period(
        r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = []
    i = 0
    for day, calls in [(-3, 10), (-2, 10), (-1, 10), (0, 40), (1, 10)]:  # Oct 29..31, then Nov 1 spikes
        for _ in range(calls):
            period = "2026-10" if day < 0 else "2026-11"
            entries.append(make_entry(i, acct="acme", period=period, ts_start_ms=NOV_1_2026_MS + day * DAY_MS + i))
            i += 1
    write_entries(r, entries)
    drain_once(r, ch, settings)
    found = usage_anomalies(ch, "2026-11", "acme", window_days=3)
    assert [(a.day, a.calls, a.trailing_avg) for a in found] == [(D0, 40, 10.0)]
    assert usage_anomalies(ch, "2026-10") == []
