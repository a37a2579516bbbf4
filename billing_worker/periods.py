"""Billing periods `YYYY-MM` (UTC) and their days."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from billing_worker.errors import InvalidArgument

_PERIOD = re.compile(r"(20[0-9]{2})-(0[1-9]|1[0-2])\Z")


def check_period(period: str) -> str:
    if not _PERIOD.match(period):
        raise InvalidArgument(f"period must look like 2026-11, got {period!r}")
    return period


def period_bounds(period: str) -> tuple[date, date]:
    """First and last day of the period."""
    m = _PERIOD.match(check_period(period))
    assert m is not None
    first = date(int(m.group(1)), int(m.group(2)), 1)
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, following - timedelta(days=1)


def current_period(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m")
