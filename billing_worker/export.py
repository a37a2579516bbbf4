"""Export usage lines as CSV or JSON; money as exact decimal strings plus integer nano-units."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import InvalidArgument
from billing_worker.money import format_money
from billing_worker.usage_queries import UsageLine, usage_lines

COLUMNS = ("acct", "day", "model", "key_id", "requests", "calls", "overage_calls", "pt", "ct", "cached",
           "reasoning", "cost_nanos", "cost")
FORMATS = ("csv", "json")


def line_record(line: UsageLine) -> dict[str, Any]:
    return {
        "acct": line.acct, "day": line.day.isoformat() if line.day else None, "model": line.model,
        "key_id": line.key_id, "requests": line.requests, "calls": line.calls,
        "overage_calls": line.overage_calls, "pt": line.pt, "ct": line.ct, "cached": line.cached,
        "reasoning": line.reasoning, "cost_nanos": line.cost_nanos, "cost": format_money(line.cost_nanos),
    }


def write_csv(lines: Iterable[UsageLine], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for line in lines:
        writer.writerow({k: "" if v is None else v for k, v in line_record(line).items()})
        count += 1
    return count


def write_json(lines: Iterable[UsageLine], out: TextIO) -> int:
    records = [line_record(line) for line in lines]
    out.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode())
    out.write("\n")
    return len(records)


def export_usage(ch: ClickHouse, period: str, fmt: str, out: TextIO, *, acct: str | None = None,
                 by: Sequence[str] = ("day", "model", "key")) -> int:
    """Write one period's usage lines to `out`; returns the number of lines."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"format must be one of {FORMATS}, got {fmt!r}")
    lines = usage_lines(ch, period, acct=acct, by=by)
    return write_csv(lines, out) if fmt == "csv" else write_json(lines, out)
