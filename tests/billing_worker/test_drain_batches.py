"""How the drain reads and acknowledges batches: the next read sent ahead, a stream read in several rounds of
one batch, clients with a single connection."""

from __future__ import annotations

import redis

from billing_worker import redis_streams as rs
from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.settings import Settings
from gateway.keys import shard_of, usage_stream, usage_streams
from tests.billing_worker.conftest import dead_letters
from tests.billing_worker.test_drain import db_totals, pending
from tests.billing_worker.usage_factory import make_entry, totals, write_entries


def test_a_read_sent_ahead_is_delivered_and_stays_pending_until_loaded(r: redis.Redis, ch: ClickHouse,
                                                                       settings: Settings) -> None:
    entries = [make_entry(i, acct="whale") for i in range(300)]
    write_entries(r, entries)
    streams = usage_streams(16)
    rs.ensure_groups(r, streams, "drain")
    reader = rs.NewEntries(r, streams, "drain", settings.consumer, 100)
    assert reader.enabled
    reader.prefetch()                                   # first round: 7 per stream (100 / 16)
    first = reader.read()                               # ... topped up to the batch size
    assert [len(e) for _, e in first] == [7, 93] and {s for s, _ in first} == {usage_stream(shard_of("whale", 16))}
    reader.prefetch()
    reader.close()                                      # the reply read ahead is read, its entries kept
    assert pending(r) == 107
    stats = drain_once(r, ch, settings)                 # own pending entries first, then the rest
    assert stats.inserted == 300 and pending(r) == 0
    assert db_totals(ch) == totals(entries)


def test_a_stream_read_in_several_rounds_is_dead_lettered_and_acked_once(r: redis.Redis, ch: ClickHouse,
                                                                         settings: Settings) -> None:
    entries = [make_entry(i, acct="whale") for i in range(600)]
    entries[50] = make_entry(50, acct="whale", calls="999")
    write_entries(r, entries)
    stats = drain_once(r, ch, settings.replace(drain_batch_size=400))   # rounds of 25, then 375, ...
    assert (stats.read, stats.inserted, stats.dead_lettered) == (600, 599, 1)
    assert [d["rid"] for d in dead_letters(r)] == ["req_0000000050"]
    assert pending(r) == 0 and db_totals(ch) == totals(entries[:50] + entries[51:])


def test_a_single_connection_client_reads_without_sending_ahead(redis_url: str, ch: ClickHouse,
                                                                settings: Settings) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        entries = [make_entry(i) for i in range(1_200)]
        write_entries(client, entries)
        assert not rs.NewEntries(client, usage_streams(16), "drain", "c", 100).enabled
        stats = drain_once(client, ch, settings)
        assert stats.inserted == 1_200 and stats.batches >= 3
        assert db_totals(ch) == totals(entries) and pending(client) == 0
    finally:
        client.close()
