from __future__ import annotations

import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.settings import Settings
from gateway.keys import usage_stream, usage_streams
from tests.billing_worker.conftest import dead_letters
from tests.billing_worker.usage_factory import make_entry, totals, write_entries

TOTALS_SQL = """
SELECT acct, model, sum(calls), sum(pt), sum(ct), sum(cost_nanos)
FROM usage_rows FINAL GROUP BY acct, model
"""


def db_totals(ch: ClickHouse) -> dict[tuple[str, str], dict[str, int]]:
    return {(a, m): {"calls": c, "pt": p, "ct": t, "cost_nanos": n} for a, m, c, p, t, n in ch.query(TOTALS_SQL)}


def pending(client: redis.Redis, shards: int = 16) -> int:
    return sum(client.xpending(s, "drain")["pending"] for s in usage_streams(shards) if client.exists(s))


def test_drain_loads_every_entry_once(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(2_000)]
    write_entries(r, entries)
    seen: list[int] = []
    stats = drain_once(r, ch, settings, progress=lambda s: seen.append(s.read))
    assert stats.read == stats.inserted == 2_000
    assert stats.batches >= 4 and seen[-1] == 2_000 and seen == sorted(seen)
    assert db_totals(ch) == totals(entries)
    assert pending(r) == 0
    assert sum(r.xlen(s) for s in usage_streams(16)) == 0  # acknowledged, then trimmed
    row = ch.query_dicts("SELECT *, day, ts_start, ts_end FROM usage_rows FINAL WHERE rid = 'req_0000000007'")[0]
    assert row["key_id"] == "k1" and row["outcome"] == "ok" and row["ts_end_ms"] - row["ts_start_ms"] == 250
    assert str(row["day"]) == "2026-11-08" and row["stream_id"].count("-") == 1


def test_redrain_and_replay_do_not_double_count(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(300)]
    write_entries(r, entries)
    drain_once(r, ch, settings)
    assert drain_once(r, ch, settings).read == 0
    write_entries(r, entries[:120])  # the same requests again (a replayed spool, a re-sent stream)
    assert drain_once(r, ch, settings).inserted == 120
    assert db_totals(ch) == totals(entries)
    assert ch.query("SELECT count(), uniqExact(rid) FROM usage_rows FINAL")[0] == (300, 300)


def test_one_busy_shard_still_fills_batches(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i, acct="whale") for i in range(1_200)]
    write_entries(r, entries)
    stats = drain_once(r, ch, settings.replace(drain_batch_size=400))
    assert stats.batches == 3 and stats.inserted == 1_200


def test_shard_count_comes_from_settings(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(200)]
    write_entries(r, entries, shards=4)
    assert set(r.scan_iter("{s:*}:usage")) <= {usage_stream(n) for n in range(4)}
    assert drain_once(r, ch, settings.replace(shards=4)).inserted == 200
    assert db_totals(ch) == totals(entries)


def test_max_batches_leaves_the_rest_for_later(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    write_entries(r, [make_entry(i, acct="one") for i in range(1_000)])
    small = settings.replace(drain_batch_size=100)
    assert drain_once(r, ch, small, max_batches=2).read == 200
    assert pending(r) == 0 and r.xlen(usage_stream(_shard("one"))) == 800
    assert drain_once(r, ch, small).read == 800


def _shard(acct: str) -> int:
    from gateway.keys import shard_of

    return shard_of(acct, 16)


def test_malformed_entries_go_to_the_dead_letter_stream(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    good = [make_entry(i) for i in range(50)]
    bad = [make_entry(1000, calls="256"), make_entry(1001, rid="x"), make_entry(1002, model=None)]
    write_entries(r, good[:25] + bad + good[25:])
    stats = drain_once(r, ch, settings)
    assert (stats.read, stats.inserted, stats.dead_lettered) == (53, 50, 3)
    assert pending(r) == 0  # dead letters are acknowledged in the same MULTI
    dead = {d["rid"]: d for d in dead_letters(r)}
    assert dead["req_0000001000"]["reason"] == "invalid: calls: expected an integer from 0 to 255, got '256'"
    assert dead["x"]["reason"].startswith("invalid: rid: expected")
    assert dead["req_0000001002"]["reason"] == "invalid: missing field(s): model"
    assert dead["req_0000001000"]["src_stream"] == usage_stream(_shard("acct0"))
    assert dead["req_0000001000"]["pt"] == bad[0]["pt"]  # the original fields are kept
    assert db_totals(ch) == totals(good)


def test_rows_clickhouse_refuses_are_bisected_out(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    ch.command("ALTER TABLE usage_rows ADD CONSTRAINT no_poison CHECK acct != 'poison'")
    good = [make_entry(i) for i in range(400)]
    poison = [make_entry(5000 + i, acct="poison") for i in range(2)]
    write_entries(r, good[:100] + poison[:1] + good[100:] + poison[1:])
    stats = drain_once(r, ch, settings)
    assert (stats.inserted, stats.dead_lettered) == (400, 2)
    reasons = {d["reason"] for d in dead_letters(r)}
    assert len(reasons) == 1 and reasons.pop().startswith("clickhouse rejected VIOLATED_CONSTRAINT (code 469)")
    assert db_totals(ch) == totals(good) and pending(r) == 0


@pytest.mark.parametrize(("protocol", "decode"), [(2, False), (3, True)])
def test_any_client_flavour_works(redis_url: str, ch: ClickHouse, settings: Settings, protocol: int,
                                  decode: bool) -> None:
    client = redis.Redis.from_url(redis_url, protocol=protocol, decode_responses=decode)
    try:
        entries = [make_entry(i) for i in range(100)]
        write_entries(client, entries)
        assert drain_once(client, ch, settings).inserted == 100
        assert db_totals(ch) == totals(entries)
    finally:
        client.close()
