"""Billing periods are calendar months in UTC; monthly keys carry the period, so nothing resets them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

Clock = Callable[[], float]
DAY_S = 86400


def system_clock() -> float:
    return time.time()


@dataclass(frozen=True)
class Period:
    name: str       # "2026-11"
    start_s: int
    end_s: int      # start of the next period
    reset_iso: str  # end_s as ISO 8601 UTC, for the X-Quota-Reset header

    def contains(self, ts: float) -> bool:
        return self.start_s <= ts < self.end_s


def period_of(ts: float) -> Period:
    moment = datetime.fromtimestamp(ts, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return Period(f"{moment.year:04d}-{moment.month:02d}", int(start.timestamp()), int(end.timestamp()),
                  end.strftime("%Y-%m-%dT%H:%M:%SZ"))


class PeriodCache:
    """The current period, recomputed only when the clock leaves it (the hot path asks per request)."""

    def __init__(self) -> None:
        self._current = period_of(0)

    def at(self, ts: float) -> Period:
        if not self._current.contains(ts):
            self._current = period_of(ts)
        return self._current


def period_named(name: str) -> Period:
    """The period `YYYY-MM`; ValueError when malformed."""
    year, month = name.split("-")
    return period_of(datetime(int(year), int(month), 1, tzinfo=UTC).timestamp())
