"""Usage for the management API's tests, made by the project's own code: requests admitted and settled by the
gateway's quota engine (admit.lua / settle.lua on the test's Redis, on the API's pinned clock), the usage streams
drained into the API's chDB (migrated by tests/api/conftest.py) by the billing worker's drain, or rows inserted
as the drain writes them."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from api.context import ApiContext
from billing_worker.drain import drain_once
from billing_worker.settings import Settings as WorkerSettings
from billing_worker.usage_entry import COLUMNS
from gateway.catalog import Catalog
from gateway.keys import parse_api_key
from gateway.quota.admission import Usage
from gateway.quota.engine import QuotaEngine
from gateway.quota.spool import Spool
from gateway.settings import Settings as GatewaySettings

WORKER = WorkerSettings()


@dataclasses.dataclass(frozen=True)
class Calls:
    """`requests` requests of `calls` calls each to `model`, each with these tokens and list cost."""

    requests: int
    calls: int = 1
    model: str = "gpt-4o-mini"
    prompt_tokens: int = 100
    completion_tokens: int = 20
    cost_nanos: int = 1_000_000


def _unthrottled(catalog: Catalog) -> Catalog:
    """The catalog with rate limits out of the way (the clock is pinned: buckets never refill); quotas as is."""
    plans = {name: dataclasses.replace(plan, rate_per_minute=10**7, burst=10**6)
             for name, plan in catalog.plans.items()}
    return dataclasses.replace(catalog, plans=plans)


async def _send(ctx: ApiContext, redis_url: str, spool_dir: Path, api_key: str, batches: list[Calls]) -> None:
    settings = GatewaySettings(redis_url=redis_url, spool_dir=spool_dir)
    client = aioredis.Redis.from_url(redis_url)
    engine = QuotaEngine(settings, _unthrottled(ctx.accounts.catalog), client, Spool(spool_dir), ctx.clock)
    key = parse_api_key(api_key)
    assert key is not None
    try:
        for batch in batches:
            model = ctx.accounts.catalog.models[batch.model]
            for _ in range(batch.requests):
                admission = await engine.admit(key, model, "req_" + uuid.uuid4().hex, True, batch.calls)
                await engine.settle(admission, Usage(billable=True, outcome="ok", status=200,
                                                     prompt_tokens=batch.prompt_tokens,
                                                     completion_tokens=batch.completion_tokens,
                                                     cost_nanos=batch.cost_nanos, latency_ms=5))
    finally:
        await engine.close()
        engine.spool.close()
        await client.aclose()


def send(ctx: ApiContext, redis_url: str, spool_dir: Path, api_key: str, *batches: Calls) -> None:
    """Admits and settles every request through the gateway's quota engine at the API's clock (raises the
    gateway's error if one is refused)."""
    asyncio.run(_send(ctx, redis_url, spool_dir, api_key, list(batches)))


def drain(ctx: ApiContext, redis_url: str) -> int:
    """Moves the settled requests from the usage streams into ClickHouse (the worker's drain); entries loaded."""
    settings = dataclasses.replace(WORKER, redis_url=redis_url, drain_consumer="api-tests", drain_backoff_s=0.01,
                                   drain_backoff_max_s=0.05)
    with ctx.clickhouse() as ch:
        stats = drain_once(ctx.store.redis, ch, settings)
    assert stats.dead_lettered == 0
    return stats.inserted


def insert_rows(ctx: ApiContext, acct: str, plan: str, day: str, rows: int, calls: int, model: str = "gpt-4o-mini",
                key_id: str = "k1", overage: int = 0, cost_nanos: int = 1_000_000) -> None:
    """`rows` settled requests of `calls` calls each on `day` (YYYY-MM-DD), as the drain loads them."""
    start_ms = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
    data: list[list[Any]] = [[f"req_{acct}_{day}_{model}_{n:06d}", acct, key_id, plan, model, "default", day[:7], "ok",
                              start_ms + n, start_ms + n + 200, 200, calls, overage, 100, 20, 0, 0, cost_nanos, 200,
                              f"{start_ms + n}-0"] for n in range(rows)]
    with ctx.clickhouse() as ch:
        ch.insert_rows("usage_rows", COLUMNS, data)
