"""The drain on a 3-master Redis Cluster: one command per shard stream (one slot each), no CROSSSLOT."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from billing_worker import redis_streams as rs
from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.settings import Settings
from gateway.keys import dead_letter_stream, shard_of, usage_stream, usage_streams
from gateway.redis_server import RedisCluster
from tests.billing_worker.conftest import dead_letters
from tests.billing_worker.test_drain import db_totals
from tests.billing_worker.usage_factory import make_entry, totals, write_entries

pytestmark = pytest.mark.cluster

ACCOUNTS = [f"tenant-{n}" for n in range(64)]


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster.from_url(redis_cluster.url)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: RedisCluster) -> Settings:
    return settings.replace(redis_url=redis_cluster.url, redis_cluster=True)


def test_drain_every_shard_of_a_cluster(cluster_client: redis.RedisCluster, ch: ClickHouse,
                                        cluster_settings: Settings) -> None:
    client, s = cluster_client, cluster_settings
    assert {shard_of(a, 16) for a in ACCOUNTS} == set(range(16))
    masters = {client.nodes_manager.get_node_from_slot(client.keyslot(usage_stream(n))).name for n in range(16)}
    assert len(masters) == 3, "the shard streams should spread over all three masters"
    for n in range(16):  # the dead-letter stream shares its shard stream's slot (one MULTI settles both)
        assert client.keyslot(dead_letter_stream(n)) == client.keyslot(usage_stream(n))

    entries = [make_entry(i, acct=ACCOUNTS[i % len(ACCOUNTS)]) for i in range(3_000)]
    bad = make_entry(99_999, acct="tenant-7", pt="lots")
    write_entries(client, [*entries, bad])
    assert all(client.xlen(stream) > 0 for stream in usage_streams(16))
    streams = usage_streams(16)
    assert rs.backlog(client, streams, s.drain_group) == 3_001

    # Some entries already delivered and left pending: to another consumer (reclaimed, idle 0 ms) and
    # to this one (read again first): one XREADGROUP per stream on the cluster.
    rs.ensure_groups(client, streams, s.drain_group)
    stale = rs.read_new(client, streams, s.drain_group, "crashed-worker", 200)
    own = rs.read_new(client, streams, s.drain_group, s.consumer, 200)
    assert len({stream for stream, _ in stale}) == 16
    n_stale = sum(len(e) for _, e in stale)
    n_own = sum(len(e) for _, e in own)
    assert n_stale >= 200 and n_own >= 200

    stats = drain_once(client, ch, s.replace(drain_claim_idle_ms=0, drain_trim=False))
    assert stats.read == 3_001 and stats.inserted == 3_000 and stats.dead_lettered == 1
    assert stats.reclaimed == n_stale and stats.batches >= 6
    assert db_totals(ch) == totals(entries)

    dead = dead_letters(client)
    assert len(dead) == 1 and dead[0]["rid"] == bad["rid"] and dead[0]["reason"].startswith("invalid: pt")
    bad_stream = usage_stream(shard_of("tenant-7", 16))
    assert dead[0]["src_stream"] == bad_stream
    assert client.xlen(dead_letter_stream(shard_of("tenant-7", 16))) == 1
    assert rs.backlog(client, streams, s.drain_group) == 0
    assert sum(client.xpending(stream, s.drain_group)["pending"] for stream in streams) == 0

    again = drain_once(client, ch, s)
    assert again.read == 0 and again.trimmed == 3_001
    assert sum(client.xlen(stream) for stream in streams) == 0
    assert db_totals(ch) == totals(entries)


def test_cluster_errors_are_stream_errors(cluster_client: redis.RedisCluster) -> None:
    with pytest.raises(rs.StreamError, match="XAUTOCLAIM failed"):
        rs.claim_stale(cluster_client, usage_stream(3), "no-such-group", "c", 0, "0-0", 10)
    # settle is a real MULTI/EXEC of one slot: a dead-letter stream of another slot is refused
    dead: list[rs.DeadLetter] = [(b"1-0", [b"rid", b"x"], "invalid: test")]
    with pytest.raises(rs.StreamError, match="acknowledging"):
        rs.settle(cluster_client, usage_stream(0), dead_letter_stream(1), "drain", [b"1-0"], dead)
    assert cluster_client.xlen(dead_letter_stream(1)) == 0


def test_settings_build_a_cluster_client(cluster_settings: Settings) -> None:
    assert Settings.from_env({"REDIS_CLUSTER": "1"}).redis_cluster
    assert not Settings.from_env({}).redis_cluster
    client = cluster_settings.redis_client()
    try:
        assert isinstance(client, redis.RedisCluster) and len(client.get_primaries()) == 3
    finally:
        client.close()
