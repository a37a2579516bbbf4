"""The spool: settles Redis could not take are replayed once; ones the script refuses are kept apart."""

from __future__ import annotations

import orjson

from gateway.catalog import Catalog
from tests.quota.conftest import EngineFactory, Instant, sync_store
from tests.quota.test_engine import OK, account, rid


async def test_replay_settles_once_and_keeps_refused_lines_apart(make_engine: EngineFactory, catalog: Catalog,
                                                                 redis_url: str, instant: Instant) -> None:
    engine = make_engine(catalog)
    account_id, key = account(sync_store(redis_url, catalog), "pro")
    admission = await engine.admit(key, catalog.models["gpt-4o-mini"], rid(), True)
    keys, args = engine.settle_args(admission, OK, 1)
    engine.spool.append(keys, args)
    engine.spool.append(keys, args)                       # spooled twice: counted once
    engine.spool.append(keys[:2], ["broken"])             # wrong arity: settle.lua refuses it
    assert await engine.replay_spool() == 3
    assert engine.spool.files() == []
    store = sync_store(redis_url, catalog)
    assert store.client.hget(engine.account_keys(account_id).quota(instant.period), "used") == b"1"
    [rejected] = (engine.spool.directory / "rejected.jsonl").read_bytes().splitlines()
    entry = orjson.loads(rejected)
    assert entry["args"] == ["broken"] and entry["reason"]


async def test_settles_spooled_by_the_previous_release_still_replay(make_engine: EngineFactory, catalog: Catalog,
                                                                   redis_url: str, instant: Instant) -> None:
    """Settles spooled before requests could reserve several calls have 21 arguments: they count one call."""
    engine = make_engine(catalog)
    account_id, key = account(sync_store(redis_url, catalog), "pro")
    admission = await engine.admit(key, catalog.models["gpt-4o-mini"], rid(), True)
    keys, args = engine.settle_args(admission, OK, 1)
    engine.spool.append(keys, args[:21])
    assert await engine.replay_spool() == 1
    counters = sync_store(redis_url, catalog).client.hgetall(engine.account_keys(account_id).quota(instant.period))
    assert (counters[b"used"], counters[b"reserved"]) == (b"1", b"0")
    assert not (engine.spool.directory / "rejected.jsonl").exists()
