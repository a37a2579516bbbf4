"""A slot migrated while the engine runs: ASK (and TRYAGAIN) while it moves, MOVED once it has moved; the
answers and counters stay exact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from gateway.catalog import Catalog
from gateway.keys import parse_api_key
from gateway.quota.cluster_batcher import ClusterBatcher
from gateway.redis_server import RedisCluster
from tests.quota.cluster_nodes import Nodes, until
from tests.quota.conftest import EngineFactory, Instant, PinnedClock, sync_store, with_plan
from tests.quota.test_engine import OK, UNLIMITED_RATE, rid

pytestmark = pytest.mark.cluster


@pytest.fixture
def nodes(redis_cluster: RedisCluster) -> Iterator[Nodes]:
    found = Nodes(redis_cluster)
    yield found
    found.close()


async def test_a_slot_migrated_mid_test_is_followed_through_ask_then_moved(
        nodes: Nodes, redis_cluster: RedisCluster, make_engine: EngineFactory, catalog: Catalog,
        clock: PinnedClock, instant: Instant) -> None:
    cat = with_plan(catalog, "free", included_calls=10, **UNLIMITED_RATE)
    store = sync_store(redis_cluster.url, cat, cluster=True)
    store.client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    account_id = store.create_account("Mover", "free")
    key = parse_api_key(store.issue_key(account_id).api_key)
    # With a boost and a request in flight, every key admit.lua names exists: an importing node serves a
    # multi-key script after ASKING only when it has all of its keys (otherwise TRYAGAIN).
    store.add_boost(account_id, 5, clock() + 86400)
    engine = make_engine(cat, url=redis_cluster.url, cluster=True, redis_timeout_s=5.0)
    assert isinstance(engine.batcher, ClusterBatcher)
    model = cat.models["gpt-4o-mini"]
    held = await engine.admit(key, model, rid(), True)
    assert (held.limit, held.remaining) == (15, 14)
    keys = engine.account_keys(account_id)
    slot = key_slot(keys.account.encode())
    source = nodes.owner(slot)
    target = next(name for name in nodes.clients if name != source)
    try:
        nodes.begin_migration(slot, source, target)
        nodes.clients[target].script_flush()      # and the target has never run the script
        nodes.reset_stats()

        during = await engine.admit(key, model, rid(), True)      # ASK -> ASKING + EVALSHA on the target
        assert during.remaining == 13
        assert nodes.errors(source) == {"ASK": 1}
        assert nodes.errors(target) == {"NOSCRIPT": 1}           # loaded there, then sent again after ASKING
        assert nodes.calls(target, "asking") == 2
        assert engine.batcher.slots.owners[slot] == source       # ASK leaves the slot map alone

        # settle names its new done marker, which the target cannot have: TRYAGAIN until the move completes
        settling = asyncio.ensure_future(engine.settle(held, OK))
        await until(lambda: nodes.errors(target).get("TRYAGAIN", 0) > 0)
        assert not settling.done()
        nodes.end_migration(slot, target)

        after = await engine.admit(key, model, rid(), True)       # MOVED -> the new owner
        assert after.remaining == 12
        await settling
        assert nodes.errors(source).get("MOVED", 0) >= 1
        assert engine.batcher.slots.owners[slot] == target
        assert nodes.owner(slot) == target

        await asyncio.gather(engine.settle(during, OK), engine.settle(after, OK))
        assert engine.spool.pending == 0
        quota = store.client.hgetall(keys.quota(instant.period))
        assert (quota[b"used"], quota[b"reserved"]) == (b"3", b"0")
        assert store.client.xlen(keys.usage) == 3
        nodes.reset_stats()
        last = await engine.admit(key, model, rid(), True)         # straight to the new owner
        assert last.remaining == 11 and nodes.errors(source) == {}
    finally:
        if nodes.owner(slot) != target:
            nodes.end_migration(slot, target)
        nodes.move_slot(slot, target, source)                     # the session's cluster as it was
        store.client.close()
