"""The cluster hot path (ClusterBatcher) on a 3-master Redis Cluster: each call goes to the primary of its
slot, a tick's calls share one connection per primary, scripts are loaded per node, and the answers are the
single Redis's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from gateway import errors
from gateway.accounts import AccountStore
from gateway.catalog import Catalog
from gateway.keys import AccountKeys, parse_api_key
from gateway.quota.admission import Admission
from gateway.quota.cluster_batcher import ClusterBatcher
from gateway.quota.engine import QuotaEngine
from gateway.redis_server import RedisCluster
from tests.quota.cluster_nodes import Nodes
from tests.quota.conftest import EngineFactory, PinnedClock, sync_store, with_plan
from tests.quota.test_engine import OK, UNLIMITED_RATE, rid

pytestmark = pytest.mark.cluster


@pytest.fixture
def nodes(redis_cluster: RedisCluster) -> Iterator[Nodes]:
    client = redis.RedisCluster.from_url(redis_cluster.url)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    client.close()
    found = Nodes(redis_cluster)
    yield found
    found.close()


def node_of(nodes: Nodes, account_id: str) -> str:
    return nodes.owner(key_slot(AccountKeys(account_id, 16).account.encode()))


def accounts_per_node(nodes: Nodes, per_node: int) -> dict[str, list[str]]:
    """`per_node` account ids served by each primary."""
    found: dict[str, list[str]] = {name: [] for name in nodes.clients}
    for i in range(1000):
        ids = found[node_of(nodes, f"route{i:04d}")]
        if len(ids) < per_node:
            ids.append(f"route{i:04d}")
        if all(len(ids) == per_node for ids in found.values()):
            return found
    raise AssertionError("the shards do not reach every primary")


def create(store: AccountStore, account_ids: list[str], plan: str) -> list[Any]:
    return [parse_api_key(store.issue_key(store.create_account(a, plan, account_id=a)).api_key) for a in account_ids]




async def test_calls_are_coalesced_per_primary_of_their_slot(nodes: Nodes, redis_cluster: RedisCluster,
                                                             make_engine: EngineFactory, catalog: Catalog) -> None:
    cat = with_plan(catalog, "pro", **UNLIMITED_RATE)
    store = sync_store(redis_cluster.url, cat, cluster=True)
    keys = {name: create(store, ids, "pro") for name, ids in accounts_per_node(nodes, 2).items()}
    store.client.close()
    engine = make_engine(cat, url=redis_cluster.url, cluster=True)
    assert isinstance(engine.batcher, ClusterBatcher)
    model = cat.models["gpt-4o-mini"]
    await asyncio.gather(*(engine.admit(k, model, rid(), True) for ks in keys.values() for k in ks))  # scripts
    nodes.reset_stats()
    results = await asyncio.gather(*(engine.admit(k, model, rid(), True) for ks in keys.values() for k in ks
                                     for _ in range(5)))
    assert all(isinstance(r, Admission) for r in results)
    for name in nodes.clients:
        assert nodes.calls(name, "evalsha") == 10      # its 2 accounts x 5: each call went to its slot's primary
        assert nodes.errors(name) == {}                # ... straight away: no MOVED, ASK or NOSCRIPT
        assert nodes.script_connections(name) == 1     # one pipelined connection per primary
    assert sorted(engine.batcher.pipes) == sorted(nodes.clients)


async def test_flushed_scripts_are_loaded_once_per_node(nodes: Nodes, redis_cluster: RedisCluster,
                                                        make_engine: EngineFactory, catalog: Catalog) -> None:
    cat = with_plan(catalog, "pro", **UNLIMITED_RATE)
    store = sync_store(redis_cluster.url, cat, cluster=True)
    keys = [k for ids in accounts_per_node(nodes, 2).values() for k in create(store, ids, "pro")]
    store.client.close()
    engine = make_engine(cat, url=redis_cluster.url, cluster=True)
    model = cat.models["gpt-4o-mini"]
    await asyncio.gather(*(engine.admit(k, model, rid(), True) for k in keys))
    for client in nodes.clients.values():
        client.script_flush()
    nodes.reset_stats()
    results = await asyncio.gather(*(engine.admit(k, model, rid(), True) for k in keys for _ in range(10)))
    assert all(isinstance(r, Admission) for r in results)
    for name in nodes.clients:
        assert nodes.calls(name, "script|load") == 1
        assert nodes.errors(name) == {"NOSCRIPT": 20}


def outcome(result: Admission | BaseException) -> tuple[Any, ...]:
    if isinstance(result, Admission):
        return ("admitted", result.plan, result.limit, result.remaining, result.burst, result.rate_remaining,
                result.rate_reset_ms, result.rpm)
    assert isinstance(result, errors.GatewayError), result
    return (type(result).__name__, result.message, result.headers)


async def scenario(engine: QuotaEngine, store: AccountStore, clock: PinnedClock,
                   account_ids: list[str]) -> list[Any]:
    """Quota and rate limits reached concurrently, settles, a refill: every answer and the final counters."""
    keys = create(store, account_ids, "free")
    model = engine.catalog.models["gpt-4o-mini"]
    seen: list[Any] = []
    for round_ in range(3):
        results = await asyncio.gather(*(engine.admit(k, model, f"req_{round_}_{i}_{n:04d}", True)
                                         for i, k in enumerate(keys) for n in range(4)), return_exceptions=True)
        seen += [outcome(r) for r in results]
        await asyncio.gather(*(engine.settle(r, OK) for r in results[::2] if isinstance(r, Admission)))
        clock.advance(1)
    for account_id in account_ids:
        quota = store.client.hgetall(engine.account_keys(account_id).quota(engine.periods.at(clock()).name))
        seen.append(sorted(quota.items()))
    return seen


async def test_results_equal_the_single_redis_results(nodes: Nodes, redis_cluster: RedisCluster, redis_url: str,
                                                      make_engine: EngineFactory, catalog: Catalog,
                                                      clock: PinnedClock) -> None:
    cat = with_plan(catalog, "free", included_calls=3, rate_per_minute=120, burst=3)
    account_ids = [ids[0] for ids in accounts_per_node(nodes, 1).values()]
    start = clock.now
    stores = [sync_store(redis_url, cat), sync_store(redis_cluster.url, cat, cluster=True)]
    single = await scenario(make_engine(cat), stores[0], clock, account_ids)
    clock.now = start
    cluster = await scenario(make_engine(cat, url=redis_cluster.url, cluster=True), stores[1], clock, account_ids)
    for store in stores:
        store.client.close()
    assert cluster == single
    kinds = {entry[0] for entry in single if isinstance(entry, tuple)}
    assert kinds == {"admitted", "RateLimited", "QuotaExceeded"}
