"""Quota-engine fixtures: an engine on a real Redis (or Redis Cluster) with a pinned clock.

Every test that uses `clock` runs at each of the pinned `INSTANTS`: mid-month, the last second of a 30-day
month, the last second of a year and 29 February. The instants lie in the first leap year after the real one:
Redis drops a period's counters at an absolute time (EXPIREAT: the period's end plus the grace) by its own
real clock, so instants in the past would find their counters gone.
"""

from __future__ import annotations

import calendar
import dataclasses
import time
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
from gateway.quota.periods import Clock
from gateway.quota.spool import Spool
from gateway.settings import Settings
from tests.support import GatewayThread


def _leap_year_ahead() -> int:
    year = datetime.now(UTC).year + 1
    while not calendar.isleap(year):
        year += 1
    return year


YEAR = _leap_year_ahead()


def epoch(when: str) -> float:
    """`YYYY-MM-DDTHH:MM:SS` (UTC; a trailing Z is allowed) as epoch seconds."""
    return datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()


class PinnedClock:
    """A clock the test moves by hand."""

    def __init__(self, when: str = f"{YEAR}-11-25T12:00:00") -> None:
        self.now = epoch(when)

    def __call__(self) -> float:
        return self.now

    def set(self, when: str) -> None:
        self.now = epoch(when)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass(frozen=True)
class Instant:
    """A pinned moment and what a client reads there, written out by hand (not computed by gateway code)."""

    when: str          # the clock
    period: str        # the month a call at `when` counts in
    last_second: str   # the last second of that month
    reset: str         # X-Quota-Reset: the first second of the next month
    next_period: str   # the month a call at `reset` counts in


INSTANTS = [
    pytest.param(Instant(f"{YEAR}-11-25T12:00:00", f"{YEAR}-11", f"{YEAR}-11-30T23:59:59",
                         f"{YEAR}-12-01T00:00:00Z", f"{YEAR}-12"), id="mid-month"),
    pytest.param(Instant(f"{YEAR}-11-30T23:59:59", f"{YEAR}-11", f"{YEAR}-11-30T23:59:59",
                         f"{YEAR}-12-01T00:00:00Z", f"{YEAR}-12"), id="last-second-of-a-30-day-month"),
    pytest.param(Instant(f"{YEAR}-12-31T23:59:59", f"{YEAR}-12", f"{YEAR}-12-31T23:59:59",
                         f"{YEAR + 1}-01-01T00:00:00Z", f"{YEAR + 1}-01"), id="last-second-of-the-year"),
    pytest.param(Instant(f"{YEAR}-02-29T12:00:00", f"{YEAR}-02", f"{YEAR}-02-29T23:59:59",
                         f"{YEAR}-03-01T00:00:00Z", f"{YEAR}-03"), id="leap-day"),
]


def with_plan(catalog: Catalog, name: str, **changes: Any) -> Catalog:
    plans = dict(catalog.plans)
    plans[name] = dataclasses.replace(plans[name], **changes)
    return dataclasses.replace(catalog, plans=plans)


@pytest.fixture(params=INSTANTS)
def instant(request: pytest.FixtureRequest) -> Instant:
    return request.param


@pytest.fixture
def clock(instant: Instant) -> PinnedClock:
    return PinnedClock(instant.when)


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    """The gateway on a clock pinned mid-month (the one of tests/conftest.py runs on the real clock)."""
    return make_gateway(clock=PinnedClock())


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


def sync_store(url: str, catalog: Catalog, cluster: bool = False, clock: Clock = time.time) -> AccountStore:
    client: Any = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    return AccountStore(client, catalog, 16, clock)
