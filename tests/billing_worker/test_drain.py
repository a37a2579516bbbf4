from __future__ import annotations

import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.keys import usage_streams
from billing_worker.settings import Settings
from tests.billing_worker.usage_factory import make_entry, totals, write_entries

TOTALS_SQL = """
SELECT acct, model, sum(calls), sum(pt), sum(ct), sum(cost_nanos)
FROM usage_rows FINAL GROUP BY acct, model
"""


def db_totals(ch: ClickHouse) -> dict[tuple[str, str], dict[str, int]]:
    return {(a, m): {"calls": c, "pt": p, "ct": t, "cost_nanos": n} for a, m, c, p, t, n in ch.query(TOTALS_SQL)}


def test_drain_loads_every_entry_once(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(2_000)]
    write_entries(r, entries)
    stats = drain_once(r, ch, settings)
    assert stats.read == stats.inserted == 2_000
    assert stats.batches >= 4
    assert db_totals(ch) == totals(entries)
    assert all(r.xpending(s, "drain")["pending"] == 0 for s in usage_streams(16))
    assert sum(r.xlen(s) for s in usage_streams(16)) == 0  # acknowledged, then trimmed


def test_redrain_and_replay_do_not_double_count(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(300)]
    write_entries(r, entries)
    drain_once(r, ch, settings)
    assert drain_once(r, ch, settings).read == 0
    write_entries(r, entries[:120])  # the same requests again (a replayed spool, a re-sent stream)
    assert drain_once(r, ch, settings).inserted == 120
    assert ch.query("SELECT count() FROM usage_rows")[0][0] >= 300
    assert db_totals(ch) == totals(entries)
