"""The hot path's pipelined connection: script reloads, slow servers, database selection."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis

from gateway import errors
from gateway.catalog import Catalog
from gateway.quota.admission import Admission
from tests.quota.conftest import EngineFactory, sync_store, with_plan
from tests.quota.test_engine import OK, account, rid

FAST = {"rate_per_minute": 10**7, "burst": 10**6}


async def test_flushed_scripts_are_loaded_once_and_calls_retried(make_engine: EngineFactory, catalog: Catalog,
                                                                 redis_url: str) -> None:
    cat = with_plan(catalog, "pro", **FAST)
    engine = make_engine(cat)
    _, key = account(sync_store(redis_url, cat), "pro")
    model = cat.models["gpt-4o-mini"]
    await engine.admit(key, model, rid(), True)
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    loads_before = client.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0)
    results = await asyncio.gather(*(engine.admit(key, model, rid(), True) for _ in range(100)))
    assert all(isinstance(r, Admission) for r in results)
    assert client.info("commandstats")["cmdstat_script|load"]["calls"] - loads_before == 1
    client.close()


BUSY = """local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) return 1"""


def busy_redis(url: str, seconds: float) -> None:
    """Keeps the single-threaded server busy in a script: every other client waits."""
    client = redis.Redis.from_url(url)
    client.eval(BUSY, 0, int(seconds * 1_000_000))
    client.close()


async def test_a_stalled_redis_times_out_and_the_next_call_reconnects(make_engine: EngineFactory, catalog: Catalog,
                                                                      redis_url: str) -> None:
    cat = with_plan(catalog, "pro", **FAST)
    engine = make_engine(cat, redis_timeout_s=0.3)
    _, key = account(sync_store(redis_url, cat), "pro")
    model = cat.models["gpt-4o-mini"]
    await engine.admit(key, model, rid(), True)
    sleeper = threading.Thread(target=busy_redis, args=(redis_url, 1.0))
    sleeper.start()
    await asyncio.sleep(0.05)
    with pytest.raises(errors.ServiceUnavailable):
        await engine.admit(key, model, rid(), True)
    sleeper.join()
    admission = await engine.admit(key, model, rid(), True)
    await engine.settle(admission, OK)
    assert admission.limit == 5000


async def test_the_database_in_the_url_is_selected(make_engine: EngineFactory, catalog: Catalog,
                                                   redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/3"
    engine = make_engine(catalog, url=url)
    account_id, key = account(sync_store(url, catalog), "pro")
    await engine.settle(await engine.admit(key, catalog.models["gpt-4o-mini"], rid(), True), OK)
    db3 = redis.Redis.from_url(url)
    assert db3.xlen(engine.account_keys(account_id).usage) == 1
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    db3.close()
