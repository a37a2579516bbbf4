"""Times as the billing domain stores and shows them: UTC, and ISO 8601 with a `Z`.

SQLite returns naive datetimes; everything was stored as UTC, so a naive value is read as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def aware(moment: datetime) -> datetime:
    """`moment` with its UTC zone (a naive value from SQLite is UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """`2026-12-01T00:00:00Z`, or None."""
    return None if moment is None else aware(moment).isoformat().replace("+00:00", "Z")
