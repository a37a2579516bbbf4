"""Usage history from ClickHouse: calls, tokens and list cost by account, day, model and API key.

Every query reads `usage_rows FINAL`, so a request id loaded twice (replay, crash before XACK) counts
once. Partitions are by period and a request id never changes period, so FINAL may skip merging across
partitions (`do_not_merge_across_partitions_select_final`). Pass `acct=None` for all accounts (admin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import InvalidArgument
from billing_worker.money import nanos_to_decimal
from billing_worker.periods import check_period

# Grouping name -> column; `acct` is always grouped.
GROUPINGS = {"day": "day", "model": "model", "key": "key_id"}
ORDERS = {"calls": "calls", "cost": "cost_nanos", "tokens": "pt + ct"}
TOP_ORDERS = {"calls": "calls", "cost": "cost_nanos", "tokens": "tokens"}
FINAL_SETTINGS = "SETTINGS do_not_merge_across_partitions_select_final = 1"


@dataclass(frozen=True)
class UsageLine:
    acct: str
    day: date | None
    model: str | None
    key_id: str | None
    requests: int
    calls: int
    overage_calls: int
    pt: int
    ct: int
    cached: int
    reasoning: int
    cost_nanos: int

    @property
    def cost(self) -> Decimal:
        return nanos_to_decimal(self.cost_nanos)


def _where(period: str, acct: str | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"period": check_period(period)}
    sql = "period = {period:String}"
    if acct is not None:
        if not acct:
            raise InvalidArgument("account id must not be empty")
        sql += " AND acct = {acct:String}"
        params["acct"] = acct
    return sql, params


def usage_lines(ch: ClickHouse, period: str, *, acct: str | None = None, by: Sequence[str] = ("day", "model", "key"),
                order_by: str | None = None, limit: int | None = None) -> list[UsageLine]:
    """Aggregates of one period grouped by account and `by` (any of "day", "model", "key")."""
    unknown = set(by) - GROUPINGS.keys()
    if unknown:
        raise InvalidArgument(f"cannot group by {sorted(unknown)}; choose from {sorted(GROUPINGS)}")
    group = ["acct", *(GROUPINGS[g] for g in GROUPINGS if g in by)]
    where, params = _where(period, acct)
    if order_by is not None and order_by not in ORDERS:
        raise InvalidArgument(f"cannot order by {order_by!r}; choose from {sorted(ORDERS)}")
    order = f"{ORDERS[order_by]} DESC, {', '.join(group)}" if order_by else ", ".join(group)
    sql = f"""
        SELECT {', '.join(group)}, count() AS requests, sum(calls) AS calls, sum(overage) AS overage_calls,
               sum(pt) AS pt, sum(ct) AS ct, sum(cached) AS cached, sum(reasoning) AS reasoning,
               sum(cost_nanos) AS cost_nanos
        FROM usage_rows FINAL
        WHERE {where}
        GROUP BY {', '.join(group)}
        ORDER BY {order}
        {f'LIMIT {int(limit)}' if limit else ''}
        {FINAL_SETTINGS}"""
    return [
        UsageLine(acct=row["acct"], day=row.get("day"), model=row.get("model"), key_id=row.get("key_id"),
                  requests=int(row["requests"]), calls=int(row["calls"]), overage_calls=int(row["overage_calls"]),
                  pt=int(row["pt"]), ct=int(row["ct"]), cached=int(row["cached"]), reasoning=int(row["reasoning"]),
                  cost_nanos=int(row["cost_nanos"]))
        for row in ch.query_dicts(sql, params)
    ]


def has_usage(ch: ClickHouse, acct: str) -> bool:
    """Whether any usage row of `acct` was ever loaded, in any period."""
    if not acct:
        raise InvalidArgument("account id must not be empty")
    rows = ch.query("SELECT 1 FROM usage_rows WHERE acct = {acct:String} LIMIT 1", {"acct": acct})
    return bool(rows)


def account_totals(ch: ClickHouse, period: str, acct: str | None = None) -> list[UsageLine]:
    """One line per account: the period's calls, tokens and list cost."""
    return usage_lines(ch, period, acct=acct, by=())


def usage_by_day(ch: ClickHouse, period: str, acct: str | None = None) -> list[UsageLine]:
    return usage_lines(ch, period, acct=acct, by=("day",))


def usage_by_key(ch: ClickHouse, period: str, acct: str | None = None) -> list[UsageLine]:
    return usage_lines(ch, period, acct=acct, by=("key",))


def cost_by_model(ch: ClickHouse, period: str, acct: str | None = None) -> list[UsageLine]:
    """List cost per account and model, most expensive first."""
    return usage_lines(ch, period, acct=acct, by=("model",), order_by="cost")


def top_models(ch: ClickHouse, period: str, acct: str | None = None, *, limit: int = 5,
               order_by: str = "calls") -> list[tuple[str, int, int, Decimal]]:
    """The `limit` most used models over the selection: (model, calls, tokens, cost)."""
    if order_by not in ORDERS:
        raise InvalidArgument(f"cannot order by {order_by!r}; choose from {sorted(ORDERS)}")
    where, params = _where(period, acct)
    sql = f"""
        SELECT model, sum(calls) AS calls, sum(pt) + sum(ct) AS tokens, sum(cost_nanos) AS cost_nanos
        FROM usage_rows FINAL WHERE {where}
        GROUP BY model ORDER BY {TOP_ORDERS[order_by]} DESC, model LIMIT {int(limit)}
        {FINAL_SETTINGS}"""
    return [(str(m), int(c), int(t), nanos_to_decimal(int(n))) for m, c, t, n in ch.query(sql, params)]


def daily_calls(ch: ClickHouse, first_day: date, last_day: date,
                acct: str | None = None) -> list[tuple[str, date, int]]:
    """Billable calls per account and UTC day over a day range (may span periods)."""
    params: dict[str, Any] = {"first": first_day, "last": last_day}
    extra = ""
    if acct is not None:
        extra, params["acct"] = " AND acct = {acct:String}", acct
    sql = f"""
        SELECT acct, day, sum(calls) FROM usage_rows FINAL
        WHERE day BETWEEN {{first:Date}} AND {{last:Date}}{extra}
        GROUP BY acct, day ORDER BY acct, day {FINAL_SETTINGS}"""
    return [(str(a), d, int(c)) for a, d, c in ch.query(sql, params)]
