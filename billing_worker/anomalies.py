"""Anomaly flags: a day whose calls exceed `factor` times the account's trailing daily average.

The trailing average covers the `window_days` calendar days before the day, counting days without
calls as zero but not days before the account's first day with usage in the queried range; a day
with no history at all is never flagged (there is no baseline), nor one below `min_calls`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import InvalidArgument
from billing_worker.periods import period_bounds
from billing_worker.usage_queries import daily_calls


@dataclass(frozen=True)
class Anomaly:
    acct: str
    day: date
    calls: int
    trailing_avg: float
    ratio: float


def flag_anomalies(daily: Iterable[tuple[str, date, int]], *, factor: float = 3.0, window_days: int = 7,
                   min_calls: int = 10, first_day: date | None = None) -> list[Anomaly]:
    """Pure: flag (acct, day, calls) rows; only days on or after `first_day` are reported."""
    if factor <= 0 or window_days < 1:
        raise InvalidArgument("factor must be > 0 and window_days >= 1")
    by_acct: dict[str, dict[date, int]] = defaultdict(dict)
    for acct, day, calls in daily:
        by_acct[acct][day] = by_acct[acct].get(day, 0) + calls
    flagged: list[Anomaly] = []
    for acct, days in sorted(by_acct.items()):
        first_seen = min(days)
        for day in sorted(days):
            calls = days[day]
            if (first_day and day < first_day) or calls < min_calls:
                continue
            history_start = max(first_seen, day - timedelta(days=window_days))
            history_len = (day - history_start).days
            if history_len <= 0:
                continue
            total = sum(days.get(history_start + timedelta(days=k), 0) for k in range(history_len))
            avg = total / history_len
            if avg > 0 and calls > factor * avg:
                flagged.append(Anomaly(acct, day, calls, round(avg, 2), round(calls / avg, 2)))
    return flagged


def usage_anomalies(ch: ClickHouse, period: str, acct: str | None = None, *, factor: float = 3.0,
                    window_days: int = 7, min_calls: int = 10) -> list[Anomaly]:
    """Anomalous days of a period, with the trailing window reaching back into the previous one."""
    first, last = period_bounds(period)
    rows = daily_calls(ch, first - timedelta(days=window_days), last, acct)
    return flag_anomalies(rows, factor=factor, window_days=window_days, min_calls=min_calls, first_day=first)
