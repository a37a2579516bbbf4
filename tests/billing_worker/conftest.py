"""Fixtures of the billing worker tests: a fresh chDB directory per test, migrated; settings for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.migrate import migrate
from billing_worker.settings import Settings
from gateway.redis_server import RedisCluster


@pytest.fixture
def chdb_url(tmp_path: Path) -> str:
    """A private embedded ClickHouse directory (one process may open it at a time)."""
    return f"chdb://{tmp_path / 'chdb'}"


@pytest.fixture
def settings(redis_url: str, chdb_url: str) -> Settings:
    return Settings(redis_url=redis_url, clickhouse_url=chdb_url, drain_consumer="test-worker",
                    drain_batch_size=500, drain_insert_attempts=3, drain_backoff_s=0.01,
                    drain_backoff_max_s=0.05)


@pytest.fixture
def ch(settings: Settings) -> Iterator[ClickHouse]:
    """The migrated embedded ClickHouse of this test; closed afterwards so the next test may open another."""
    with ClickHouse(settings.clickhouse_url) as client:
        migrate(client, settings.schema_dir)
        yield client


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def dead_letters(client: redis.Redis, shards: int = 16) -> list[dict[str, str]]:
    """Every entry of every `{s:NN}:usage:dead` stream, decoded."""
    from gateway.keys import dead_letter_stream

    out: list[dict[str, str]] = []
    for n in range(shards):
        for _, fields in client.xrange(dead_letter_stream(n)):
            out.append({(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                        for k, v in fields.items()})
    return out


@pytest.fixture
def cluster_redis(redis_cluster: RedisCluster) -> Iterator[redis.RedisCluster]:
    """A client of the session's Redis Cluster, emptied; every node's connections are closed afterwards."""
    client = redis.RedisCluster.from_url(redis_cluster.url)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    for node in client.get_nodes():
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()
    client.close()
