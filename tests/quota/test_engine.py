"""admit.lua and settle.lua through the engine, against a real Redis, with a pinned clock."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis

from gateway import errors
from gateway.accounts import AccountStore
from gateway.catalog import Catalog
from gateway.keys import parse_api_key
from gateway.quota.admission import Admission, Usage
from gateway.quota.engine import QuotaEngine
from gateway.quota.reaper import reap_expired
from tests.quota.conftest import EngineFactory, Instant, PinnedClock, epoch, sync_store, with_plan

OK = Usage(billable=True, outcome="ok", status=200, prompt_tokens=12, completion_tokens=30, cached_tokens=2,
           cost_nanos=1234, latency_ms=7)
UNLIMITED_RATE = {"rate_per_minute": 10**7, "burst": 10**6}


def rid() -> str:
    return "req_" + uuid.uuid4().hex


def account(store: AccountStore, plan: str, **kwargs: Any) -> tuple[str, Any]:
    account_id = store.create_account("Test", plan, **kwargs)
    return account_id, parse_api_key(store.issue_key(account_id).api_key)


def snapshot(client: redis.Redis, account_id: str) -> dict[bytes, Any]:
    """Every key of the account (and the shard streams) with its serialized value."""
    keys = client.keys(f"*:a:{account_id}:*") + client.keys("{s:*}:usage") + client.keys("{s:*}:notify")
    return {key: client.dump(key) for key in sorted(keys)}


async def admit_many(engine: QuotaEngine, key: Any, model: Any, n: int) -> list[Admission | Exception]:
    return list(await asyncio.gather(*(engine.admit(key, model, rid(), True) for _ in range(n)),
                                     return_exceptions=True))


def quota_hash(client: redis.Redis, engine: QuotaEngine, account_id: str, period: str) -> dict[str, int]:
    raw = client.hgetall(engine.account_keys(account_id).quota(period))
    return {k.decode(): int(v) for k, v in raw.items()}


@pytest.fixture
def sync_client(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def test_quota_is_exact_under_concurrency(make_engine: EngineFactory, catalog: Catalog, redis_url: str,
                                                sync_client: redis.Redis, instant: Instant) -> None:
    cat = with_plan(catalog, "free", included_calls=25, **UNLIMITED_RATE)
    engine = make_engine(cat)
    account_id, key = account(sync_store(redis_url, cat), "free")
    results = await admit_many(engine, key, cat.models["gpt-4o-mini"], 250)
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, errors.QuotaExceeded)]
    assert len(admitted) == 25 and len(refused) == 225
    await asyncio.gather(*(engine.settle(a, OK) for a in admitted))
    assert {a.period.name for a in admitted} == {instant.period}
    counters = quota_hash(sync_client, engine, account_id, instant.period)
    assert counters["used"] == 25 and counters["reserved"] == 0
    assert counters["pt"] == 25 * 12 and counters["m:gpt-4o-mini:calls"] == 25
    assert sync_client.xlen(engine.account_keys(account_id).usage) == 25


async def test_token_bucket_is_exact_over_a_pinned_clock(make_engine: EngineFactory, catalog: Catalog,
                                                         redis_url: str, clock: PinnedClock) -> None:
    cat = with_plan(catalog, "pro", rate_per_minute=60, burst=10)
    engine = make_engine(cat)
    _, key = account(sync_store(redis_url, cat), "pro")
    model = cat.models["gpt-4o-mini"]
    results = await admit_many(engine, key, model, 50)
    assert sum(isinstance(r, Admission) for r in results) == 10
    limited = [r for r in results if isinstance(r, errors.RateLimited)]
    assert len(limited) == 40 and limited[0].headers["retry-after"] == "1"
    clock.advance(2.5)                           # 60/min refills 2.5 tokens: 2 whole requests
    assert sum(isinstance(r, Admission) for r in await admit_many(engine, key, model, 10)) == 2
    clock.advance(3600)                          # refill is capped at the burst
    assert sum(isinstance(r, Admission) for r in await admit_many(engine, key, model, 30)) == 10


async def test_rate_limit_applies_per_key_and_per_account(make_engine: EngineFactory, catalog: Catalog,
                                                          redis_url: str) -> None:
    cat = with_plan(catalog, "pro", rate_per_minute=60, burst=4)
    engine = make_engine(cat)
    store = sync_store(redis_url, cat)
    account_id, first = account(store, "pro")
    second = parse_api_key(store.issue_key(account_id).api_key)
    model = cat.models["gpt-4o-mini"]
    assert sum(isinstance(r, Admission) for r in await admit_many(engine, first, model, 3)) == 3
    results = await admit_many(engine, second, model, 3)
    assert sum(isinstance(r, Admission) for r in results) == 1     # the account's burst of 4 is shared
    assert "account" in str(next(r for r in results if isinstance(r, errors.RateLimited)))


async def test_refusals_leave_no_trace(make_engine: EngineFactory, catalog: Catalog, redis_url: str,
                                       sync_client: redis.Redis) -> None:
    cat = with_plan(catalog, "free", included_calls=1, rate_per_minute=60, burst=2)
    engine = make_engine(cat)
    account_id, key = account(sync_store(redis_url, cat), "free")
    await engine.settle(await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True), OK)
    before = snapshot(sync_client, account_id)
    with pytest.raises(errors.PermissionDenied):
        await engine.admit(key, cat.models["gpt-4o"], rid(), True)             # model not in plan
    with pytest.raises(errors.QuotaExceeded):
        await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True)        # quota used up
    assert snapshot(sync_client, account_id) == before


async def test_rate_limit_refusal_changes_no_counter(make_engine: EngineFactory, catalog: Catalog,
                                                     redis_url: str, sync_client: redis.Redis) -> None:
    cat = with_plan(catalog, "pro", rate_per_minute=60, burst=1)
    engine = make_engine(cat)
    account_id, key = account(sync_store(redis_url, cat), "pro")
    await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True)
    before = snapshot(sync_client, account_id)
    with pytest.raises(errors.RateLimited):
        await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True)
    assert snapshot(sync_client, account_id) == before


async def test_month_boundary_starts_from_zero(make_engine: EngineFactory, catalog: Catalog, redis_url: str,
                                               clock: PinnedClock, instant: Instant,
                                               sync_client: redis.Redis) -> None:
    cat = with_plan(catalog, "free", included_calls=2, **UNLIMITED_RATE)
    engine = make_engine(cat)
    account_id, key = account(sync_store(redis_url, cat), "free")
    model = cat.models["gpt-4o-mini"]
    clock.set(instant.last_second)
    clock.advance(-1)
    await engine.settle(await engine.admit(key, model, rid(), True), OK)
    clock.advance(1)                                         # 23:59:59, the month's last second
    last = await engine.admit(key, model, rid(), True)
    assert last.period.name == instant.period and last.headers()["x-quota-reset"] == instant.reset
    await engine.settle(last, OK)
    clock.advance(0.999)
    with pytest.raises(errors.QuotaExceeded) as refused:
        await engine.admit(key, model, rid(), True)
    assert refused.value.headers["retry-after"] == "1"      # the month ends in a second
    clock.set(instant.reset)                                 # 00:00:00 UTC on the 1st
    admission = await engine.admit(key, model, rid(), True)
    assert admission.period.name == instant.next_period and admission.remaining == 1
    await engine.settle(admission, OK)
    rows = sync_client.xrange(engine.account_keys(account_id).usage)
    assert [f[b"period"].decode() for _, f in rows] == [instant.period, instant.period, instant.next_period]
    assert quota_hash(sync_client, engine, account_id, instant.period)["used"] == 2
    assert quota_hash(sync_client, engine, account_id, instant.next_period)["used"] == 1
    old = engine.account_keys(account_id).quota(instant.period)
    assert sync_client.expiretime(old) == epoch(instant.reset) + 62 * 86400     # kept for the grace period


async def test_boosts_add_calls_until_they_expire(make_engine: EngineFactory, catalog: Catalog,
                                                  redis_url: str, clock: PinnedClock, instant: Instant) -> None:
    cat = with_plan(catalog, "free", included_calls=1, **UNLIMITED_RATE)
    engine = make_engine(cat)
    store = sync_store(redis_url, cat, clock=clock)
    account_id, key = account(store, "free")
    model = cat.models["gpt-4o-mini"]
    await engine.settle(await engine.admit(key, model, rid(), True), OK)
    with pytest.raises(errors.QuotaExceeded):
        await engine.admit(key, model, rid(), True)
    store.add_boost(account_id, 2, epoch(instant.reset) + 3600)       # until 01:00 on the next month's 1st
    results = await admit_many(engine, key, model, 5)
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == 2 and admitted[0].limit == 3 and admitted[0].period.name == instant.period
    clock.set(instant.reset)                         # a new month, the boost still running: 1 + 2 calls
    fresh = await engine.admit(key, model, rid(), True)
    assert (fresh.period.name, fresh.limit, fresh.remaining) == (instant.next_period, 3, 2)
    clock.advance(3600)                              # the boost's last millisecond is over
    with pytest.raises(errors.QuotaExceeded) as refused:
        await engine.admit(key, model, rid(), True)
    assert refused.value.headers["x-quota-limit"] == "1"


async def test_a_boost_must_end_after_the_gateway_clock(catalog: Catalog, redis_url: str,
                                                        clock: PinnedClock) -> None:
    store = sync_store(redis_url, catalog, clock=clock)
    account_id, _ = account(store, "pro")
    with pytest.raises(errors.InvalidRequest, match="must end in the future"):
        store.add_boost(account_id, 2, clock.now)
    store.add_boost(account_id, 2, clock.now + 1)


async def test_overage_is_billed_only_when_the_account_enabled_it(
        make_engine: EngineFactory, catalog: Catalog, redis_url: str, sync_client: redis.Redis,
        instant: Instant) -> None:
    cat = with_plan(catalog, "pro", **UNLIMITED_RATE)
    engine = make_engine(cat)
    store = sync_store(redis_url, cat)
    account_id, key = account(store, "pro")
    store.set_custom_quota(account_id, 2)
    model = cat.models["gpt-4o-mini"]
    for _ in range(2):
        await engine.settle(await engine.admit(key, model, rid(), True), OK)
    with pytest.raises(errors.QuotaExceeded):
        await engine.admit(key, model, rid(), True)
    store.set_overage(account_id, True)
    admitted = await admit_many(engine, key, model, 3)
    assert all(isinstance(a, Admission) for a in admitted)
    await asyncio.gather(*(engine.settle(a, OK) for a in admitted if isinstance(a, Admission)))
    counters = quota_hash(sync_client, engine, account_id, instant.period)
    assert counters["used"] == 5 and counters["overage"] == 3
    rows = sync_client.xrange(engine.account_keys(account_id).usage)
    assert [int(f[b"overage"]) for _, f in rows] == [0, 0, 1, 1, 1]


async def test_free_plan_has_no_overage_even_when_enabled(make_engine: EngineFactory, catalog: Catalog,
                                                         redis_url: str) -> None:
    cat = with_plan(catalog, "free", included_calls=1, **UNLIMITED_RATE)
    engine = make_engine(cat)
    _, key = account(sync_store(redis_url, cat), "free", overage=True)
    await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True)
    with pytest.raises(errors.QuotaExceeded):
        await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True)


async def test_enterprise_is_unlimited_but_rate_limited(make_engine: EngineFactory, catalog: Catalog,
                                                        redis_url: str) -> None:
    cat = with_plan(catalog, "enterprise", rate_per_minute=600, burst=20)
    engine = make_engine(cat)
    _, key = account(sync_store(redis_url, cat), "enterprise")
    results = await admit_many(engine, key, cat.models["o3-mini"], 30)
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == 20 and admitted[0].limit == -1
    assert admitted[0].headers()["x-quota-limit"] == "unlimited"
    assert all(isinstance(r, errors.RateLimited) for r in results if not isinstance(r, Admission))


async def test_custom_quota_only_where_the_plan_allows_it(make_engine: EngineFactory, catalog: Catalog,
                                                         redis_url: str) -> None:
    cat = with_plan(catalog, "pro", **UNLIMITED_RATE)
    engine = make_engine(cat)
    store = sync_store(redis_url, cat)
    account_id, key = account(store, "pro")
    store.set_custom_quota(account_id, 7)
    assert (await engine.admit(key, cat.models["gpt-4o"], rid(), True)).limit == 7
    free_id, _ = account(store, "free")
    with pytest.raises(errors.GatewayError, match="does not allow a custom quota"):
        store.set_custom_quota(free_id, 1000)


async def test_replayed_settle_counts_once(make_engine: EngineFactory, catalog: Catalog, redis_url: str,
                                           sync_client: redis.Redis, instant: Instant) -> None:
    engine = make_engine(with_plan(catalog, "pro", **UNLIMITED_RATE))
    account_id, key = account(sync_store(redis_url, catalog), "pro")
    admission = await engine.admit(key, catalog.models["gpt-4o-mini"], rid(), True)
    keys, args = engine.settle_args(admission, OK, 1)
    for _ in range(3):
        await engine.batcher.call(engine.scripts["settle"], keys, args)
    assert quota_hash(sync_client, engine, account_id, instant.period)["used"] == 1
    assert sync_client.xlen(engine.account_keys(account_id).usage) == 1


async def test_upstream_failure_releases_the_reservation(make_engine: EngineFactory, catalog: Catalog,
                                                         redis_url: str, sync_client: redis.Redis,
                                                         instant: Instant) -> None:
    cat = with_plan(catalog, "free", included_calls=1, **UNLIMITED_RATE)
    engine = make_engine(cat)
    account_id, key = account(sync_store(redis_url, cat), "free")
    model = cat.models["gpt-4o-mini"]
    await engine.settle(await engine.admit(key, model, rid(), True), Usage(False, "upstream_error", 502))
    counters = quota_hash(sync_client, engine, account_id, instant.period)
    assert counters["reserved"] == 0 and counters.get("used", 0) == 0
    [(_, row)] = sync_client.xrange(engine.account_keys(account_id).usage)
    assert row[b"calls"] == b"0" and row[b"outcome"] == b"upstream_error"
    await engine.admit(key, model, rid(), True)     # the one call of the quota is still there


async def test_abandoned_reservation_is_released_by_the_reaper(
        make_engine: EngineFactory, catalog: Catalog, redis_url: str, clock: PinnedClock, instant: Instant,
        sync_client: redis.Redis) -> None:
    cat = with_plan(catalog, "free", included_calls=1, **UNLIMITED_RATE)
    engine = make_engine(cat, reservation_ttl_s=60)
    account_id, key = account(sync_store(redis_url, cat), "free")
    model = cat.models["gpt-4o-mini"]
    crashed = await engine.admit(key, model, rid(), True)     # the gateway dies before settling
    with pytest.raises(errors.QuotaExceeded):
        await engine.admit(key, model, rid(), True)
    assert await reap_expired(engine) == 0                      # not expired yet
    clock.advance(59)
    assert await reap_expired(engine) == 0
    clock.advance(2)                                            # past its 60 s, maybe in the next month
    assert await reap_expired(engine) == 1
    counters = quota_hash(sync_client, engine, account_id, instant.period)     # released where it was held
    assert counters["reserved"] == 0 and counters.get("used", 0) == 0
    [(_, row)] = sync_client.xrange(engine.account_keys(account_id).usage)
    assert row[b"rid"].decode() == crashed.rid and row[b"outcome"] == b"abandoned"
    await engine.admit(key, model, rid(), True)


async def test_warnings_fire_once_at_80_and_100_percent(make_engine: EngineFactory, catalog: Catalog,
                                                        redis_url: str, sync_client: redis.Redis,
                                                        instant: Instant) -> None:
    cat = with_plan(catalog, "pro", included_calls=10, **UNLIMITED_RATE)
    engine = make_engine(cat)
    store = sync_store(redis_url, cat)
    account_id, key = account(store, "pro", overage=True)
    for _ in range(14):
        await engine.settle(await engine.admit(key, cat.models["gpt-4o-mini"], rid(), True), OK)
    notes = sync_client.xrange(engine.account_keys(account_id).notify)
    assert [(int(f[b"level"]), int(f[b"used"]), f[b"period"].decode()) for _, f in notes] == [
        (80, 8, instant.period), (100, 10, instant.period)]


async def test_suspended_account_and_unknown_plan_are_refused(make_engine: EngineFactory, catalog: Catalog,
                                                              redis_url: str) -> None:
    engine = make_engine(catalog)
    store = sync_store(redis_url, catalog)
    account_id, key = account(store, "pro")
    store.set_status(account_id, "suspended")
    with pytest.raises(errors.PermissionDenied, match="suspended"):
        await engine.admit(key, catalog.models["gpt-4o-mini"], rid(), True)
    store.set_status(account_id, "active")
    store.client.hset(engine.account_keys(account_id).account, "plan", "legacy")
    with pytest.raises(errors.ServiceUnavailable, match="legacy"):
        await engine.admit(key, catalog.models["gpt-4o-mini"], rid(), True)


async def test_duplicate_request_id_is_refused(make_engine: EngineFactory, catalog: Catalog,
                                               redis_url: str) -> None:
    engine = make_engine(with_plan(catalog, "pro", **UNLIMITED_RATE))
    _, key = account(sync_store(redis_url, catalog), "pro")
    same = rid()
    await engine.admit(key, catalog.models["gpt-4o-mini"], same, True)
    with pytest.raises(errors.InvalidRequest, match="Duplicate"):
        await engine.admit(key, catalog.models["gpt-4o-mini"], same, True)
