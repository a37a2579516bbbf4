"""The same scripts, unchanged, on a 3-master Redis Cluster: every call stays in one slot (no CROSSSLOT)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from gateway import errors
from gateway.catalog import Catalog
from gateway.keys import parse_api_key, usage_stream
from gateway.quota.admission import Admission, Usage
from gateway.quota.reaper import reap_expired
from gateway.redis_server import RedisCluster
from tests.quota.conftest import EngineFactory, Instant, PinnedClock, sync_store, with_plan
from tests.quota.test_engine import OK, rid

pytestmark = pytest.mark.cluster


async def test_admit_settle_and_reap_on_a_cluster(redis_cluster: RedisCluster, make_engine: EngineFactory,
                                                  catalog: Catalog, clock: PinnedClock, instant: Instant) -> None:
    cat = with_plan(catalog, "free", included_calls=3, rate_per_minute=10**6, burst=10**6)
    store = sync_store(redis_cluster.url, cat, cluster=True)
    store.client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    engine = make_engine(cat, url=redis_cluster.url, cluster=True, reservation_ttl_s=60)
    await engine.client.initialize()
    def node_of(account_id: str) -> str:
        return str(store.client.nodes_manager.get_node_from_slot(
            store.client.keyslot(engine.account_keys(account_id).account)).name)
    by_node: dict[str, list[str]] = {}
    for i in range(200):                      # four account ids on each master (random ids may miss one)
        by_node.setdefault(node_of(f"tenant{i:03d}"), []).append(f"tenant{i:03d}")
    assert len(by_node) == 3, "the shards should spread over all three masters"
    chosen = [a for ids in by_node.values() for a in ids[:4]]
    accounts = [store.create_account(f"Tenant {a}", "free", account_id=a) for a in chosen]
    keys = [parse_api_key(store.issue_key(a).api_key) for a in accounts]
    model = cat.models["gpt-4o-mini"]
    results: list[Any] = await asyncio.gather(
        *(engine.admit(k, model, rid(), True) for k in keys for _ in range(4)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == 36
    assert all(isinstance(r, errors.QuotaExceeded) for r in results if not isinstance(r, Admission))
    abandoned = admitted.pop()
    await asyncio.gather(*(engine.settle(a, OK) for a in admitted))
    clock.advance(61)
    assert await reap_expired(engine) == 1
    shards = {engine.account_keys(a).shard for a in accounts}
    assert sum(store.client.xlen(usage_stream(shard)) for shard in shards) == 36
    quota = store.client.hgetall(engine.account_keys(abandoned.key.account_id).quota(instant.period))
    assert quota[b"reserved"] == b"0" and quota[b"used"] == b"2"
    await engine.settle(abandoned, Usage(True, "ok", 200))      # late settle of a reaped request: no-op
    assert store.client.hget(engine.account_keys(abandoned.key.account_id).quota(instant.period), "used") == b"2"
    store.client.close()
