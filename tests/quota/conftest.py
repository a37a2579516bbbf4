"""Quota-engine fixtures: an engine on a real Redis (or Redis Cluster) with a pinned clock."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncCluster

from gateway.accounts import AccountStore
from gateway.catalog import Catalog
from gateway.quota.engine import QuotaEngine
from gateway.quota.spool import Spool
from gateway.settings import Settings


class PinnedClock:
    """A clock the test moves by hand."""

    def __init__(self, when: str = "2026-11-25T12:00:00") -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: str) -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()

    def advance(self, seconds: float) -> None:
        self.now += seconds


def with_plan(catalog: Catalog, name: str, **changes: Any) -> Catalog:
    plans = dict(catalog.plans)
    plans[name] = dataclasses.replace(plans[name], **changes)
    return dataclasses.replace(catalog, plans=plans)


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock()


EngineFactory = Callable[..., QuotaEngine]


@pytest.fixture
async def make_engine(redis_url: str, clock: PinnedClock, tmp_path: Path) -> AsyncIterator[EngineFactory]:
    engines: list[QuotaEngine] = []

    def make(catalog: Catalog, url: str | None = None, cluster: bool = False, **overrides: Any) -> QuotaEngine:
        settings = Settings(redis_url=url or redis_url, redis_cluster=cluster, spool_dir=tmp_path / "spool",
                            **overrides)
        client: Any = AsyncCluster.from_url(settings.redis_url) if cluster else aioredis.Redis.from_url(
            settings.redis_url)
        engine = QuotaEngine(settings, catalog, client, Spool(settings.spool_dir), clock)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()
        engine.spool.close()
        await engine.client.aclose()


def sync_store(url: str, catalog: Catalog, cluster: bool = False) -> AccountStore:
    client: Any = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    return AccountStore(client, catalog, 16)
