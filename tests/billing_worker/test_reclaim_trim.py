"""XAUTOCLAIM of a dead consumer's entries; trimming never passes a pending entry."""

from __future__ import annotations

import time

import redis

from billing_worker import redis_streams as rs
from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.settings import Settings
from gateway.keys import shard_of, usage_stream
from tests.billing_worker.test_drain import db_totals, pending
from tests.billing_worker.usage_factory import make_entry, totals, write_entries

ACCT = "solo"
STREAM = usage_stream(shard_of(ACCT, 16))


def read_as(client: redis.Redis, consumer: str, count: int, group: str = "drain") -> list[str]:
    reply = client.xreadgroup(group, consumer, {STREAM: ">"}, count=count)
    entries = reply[STREAM][0] if isinstance(reply, dict) else reply[0][1]
    return [entry_id for entry_id, _ in entries]


def test_dead_consumers_entries_are_reclaimed_after_the_idle_time(r: redis.Redis, ch: ClickHouse,
                                                                    settings: Settings) -> None:
    entries = [make_entry(i, acct=ACCT) for i in range(30)]
    write_entries(r, entries)
    r.xgroup_create(STREAM, "drain", id="0")
    read_as(r, "crashed-worker", 10)  # delivered, never acknowledged: the worker died

    fresh = drain_once(r, ch, settings.replace(drain_claim_idle_ms=60_000))
    assert (fresh.read, fresh.reclaimed) == (20, 0) and pending(r) == 10  # not idle long enough yet

    time.sleep(0.15)
    stats = drain_once(r, ch, settings.replace(drain_claim_idle_ms=50))
    assert (stats.reclaimed, stats.inserted) == (10, 10)
    assert pending(r) == 0 and db_totals(ch) == totals(entries)


def test_trim_stops_at_the_oldest_pending_entry(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    ids = write_entries(r, [make_entry(i, acct=ACCT) for i in range(10)])
    r.xgroup_create(STREAM, "drain", id="0")
    held = read_as(r, "slow-worker", 3)
    assert held == ids[:3]

    drain_once(r, ch, settings)  # loads and acks 4..10; entries 1..3 are still pending elsewhere
    assert [e for e, _ in r.xrange(STREAM)] == ids  # nothing below the oldest pending id was trimmable

    r.xack(STREAM, "drain", *held[:2])
    drain_once(r, ch, settings)
    assert [e for e, _ in r.xrange(STREAM)] == ids[2:]  # trimmed exactly up to the pending entry

    r.xack(STREAM, "drain", held[2])
    assert drain_once(r, ch, settings).trimmed == 8
    assert r.xlen(STREAM) == 0


def test_trim_respects_every_consumer_group(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    ids = write_entries(r, [make_entry(i, acct=ACCT) for i in range(6)])
    r.xgroup_create(STREAM, "audit", id="0")
    read_as(r, "auditor", 2, group="audit")
    r.xack(STREAM, "audit", ids[0])
    drain_once(r, ch, settings)
    assert rs.safe_trim_id(r, STREAM) == ids[1]
    assert [e for e, _ in r.xrange(STREAM)] == ids[1:]


def test_trim_without_any_group_does_nothing(r: redis.Redis) -> None:
    write_entries(r, [make_entry(1, acct=ACCT)])
    assert rs.safe_trim_id(r, STREAM) is None and rs.trim_acknowledged(r, STREAM) == 0


def test_vanished_pending_entries_are_counted_not_loaded(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    ids = write_entries(r, [make_entry(i, acct=ACCT) for i in range(4)])
    r.xgroup_create(STREAM, "drain", id="0")
    read_as(r, "test-worker", 4)  # our own pending entries (same consumer name)...
    r.xdel(STREAM, ids[0])        # ... one of which someone deleted
    stats = drain_once(r, ch, settings)
    assert (stats.read, stats.inserted, stats.vanished) == (4, 3, 1) and pending(r) == 0


def test_backlog_counts_pending_and_undelivered(r: redis.Redis) -> None:
    write_entries(r, [make_entry(i, acct=ACCT) for i in range(5)])
    streams = [STREAM]
    assert rs.backlog(r, streams, "drain") == 5
    r.xgroup_create(STREAM, "drain", id="0")
    read_as(r, "w", 2)
    assert rs.backlog(r, streams, "drain") == 5
    r.xack(STREAM, "drain", *[e for e, _ in r.xrange(STREAM, count=2)])
    assert rs.backlog(r, streams, "drain") == 3
