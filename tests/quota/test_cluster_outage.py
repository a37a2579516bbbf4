"""A cluster node down: its accounts' admits go through the one Redis-unavailable policy (503 when closed,
admitted degraded when open), their settles are spooled and replayed exactly once when it is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.crc import key_slot

from gateway import errors
from gateway.catalog import Catalog
from gateway.keys import AccountKeys, parse_api_key
from gateway.quota.engine import QuotaEngine
from gateway.quota.spool import Spool
from gateway.redis_server import RedisCluster
from gateway.settings import Settings
from tests.quota.cluster_nodes import Nodes
from tests.quota.conftest import PinnedClock, sync_store, with_plan
from tests.quota.test_engine import OK, UNLIMITED_RATE, rid

pytestmark = pytest.mark.cluster


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test's own: one of its nodes is stopped."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.close()


def engine_for(url: str, catalog: Catalog, policy: str, spool_dir: Path) -> QuotaEngine:
    settings = Settings(redis_url=url, redis_cluster=True, redis_failure_policy=policy, redis_timeout_s=0.5,
                        spool_dir=spool_dir)
    return QuotaEngine(settings, catalog, AsyncCluster.from_url(url), Spool(spool_dir), PinnedClock())


async def test_a_node_down_goes_through_the_redis_unavailable_policy(own_cluster: RedisCluster, catalog: Catalog,
                                                                     tmp_path: Path) -> None:
    cat = with_plan(catalog, "pro", **UNLIMITED_RATE)
    store = sync_store(own_cluster.url, cat, cluster=True)
    account_id = store.create_account("Down", "pro")
    key = parse_api_key(store.issue_key(account_id).api_key)
    nodes = Nodes(own_cluster)
    owner = nodes.owner(key_slot(AccountKeys(account_id, 16).account.encode()))
    server = next(n for n in own_cluster.nodes if f"127.0.0.1:{n.port}" == owner)
    closed = engine_for(own_cluster.url, cat, "closed", tmp_path / "closed")
    opened = engine_for(own_cluster.url, cat, "open", tmp_path / "open")
    model = cat.models["gpt-4o-mini"]
    try:
        before = [await engine.admit(key, model, rid(), True) for engine in (closed, opened)]
        server.stop()
        with pytest.raises(errors.ServiceUnavailable) as refused:
            await closed.admit(key, model, rid(), True)
        assert refused.value.code == "quota_backend_unavailable"
        degraded = await opened.admit(key, model, rid(), True)      # the key was verified before
        assert degraded.degraded
        for engine, admission in zip((closed, opened), before, strict=True):
            await engine.settle(admission, OK)
            assert engine.spool.pending == 1                          # kept for later, not lost

        server.start()                                                # same port, same nodes.conf
        nodes.wait_ok()
        assert [await engine.replay_spool() for engine in (closed, opened)] == [1, 1]
        quota = store.client.hgetall(store.keys(account_id).quota(closed.periods.at(closed.clock()).name))
        assert (quota[b"used"], quota.get(b"reserved", b"0")) == (b"2", b"0")
    finally:
        for engine in (closed, opened):
            await engine.close()
            engine.spool.close()
            await engine.client.aclose()
        nodes.close()
        store.client.close()
