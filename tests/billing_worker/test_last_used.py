"""API keys' last-used time: admit.lua's bucket timestamps copied into the database off the hot path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate
from billing.projection import Projector
from billing_worker.embedded import LastUsedScheduler
from billing_worker.last_used import collect_last_used, sync_last_used
from gateway.catalog import Catalog
from gateway.keys import AccountKeys
from tests.gateway.test_proxy import MESSAGES, sdk
from tests.quota.conftest import YEAR, PinnedClock, epoch


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/aihub.db")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock(f"{YEAR}-11-25T12:00:00")


@pytest.fixture
def service(sqlite_engine: Engine, client: redis.Redis, catalog: Catalog, clock: PinnedClock) -> AccountService:
    return AccountService(sessions(sqlite_engine), Projector(client, 16, clock), catalog, clock)


def last_used(service: AccountService, account_id: str, key_id: str) -> str | None:
    [key] = [k for k in service.list_keys(account_id) if k["id"] == key_id]
    return key["last_used_at"]  # type: ignore[no-any-return]


def test_last_used_time_follows_admitted_requests_and_never_goes_back(
        make_gateway: Any, catalog: Catalog, client: redis.Redis, service: AccountService,
        clock: PinnedClock) -> None:
    gateway = make_gateway(catalog=catalog, clock=clock)
    account_id = service.create_account("Last used", "pro").account["id"]
    issued, _ = service.issue_key(account_id)
    idle, _ = service.issue_key(account_id, "idle")
    sdk(gateway, issued.api_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert collect_last_used(client) == {(account_id, issued.key_id): epoch(f"{YEAR}-11-25T12:00:00")}
    assert sync_last_used(client, service) == 1
    assert last_used(service, account_id, issued.key_id) == f"{YEAR}-11-25T12:00:00Z"
    assert last_used(service, account_id, idle.key_id) is None

    tb = AccountKeys(account_id, 16).buckets
    client.hset(tb, f"k:{issued.key_id}:ts", int(epoch(f"{YEAR}-11-20T08:00:00") * 1000))   # an older time
    assert sync_last_used(client, service) == 0
    assert last_used(service, account_id, issued.key_id) == f"{YEAR}-11-25T12:00:00Z"

    clock.advance(90)
    sdk(gateway, issued.api_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sync_last_used(client, service) == 1
    assert last_used(service, account_id, issued.key_id) == f"{YEAR}-11-25T12:01:30Z"


def test_sync_skips_what_it_recorded_already(client: redis.Redis, service: AccountService) -> None:
    account_id = service.create_account("Skip", "free").account["id"]
    issued, _ = service.issue_key(account_id)
    client.hset(AccountKeys(account_id, 16).buckets,
                mapping={f"k:{issued.key_id}:ts": 1_800_000_000_000, "a:ts": 1_800_000_000_000})
    client.hset(AccountKeys("nosuchacct", 16).buckets, f"k:{issued.key_id}:ts", 1_900_000_000_000)  # not its key
    client.set("{s:01}:a:junk1:tb", "not a hash")          # a string matching the pattern is skipped, not fatal
    calls: list[dict[tuple[str, str], float]] = []

    class Recorder:
        def record_last_used(self, used: dict[tuple[str, str], float]) -> int:
            calls.append(dict(used))
            return service.record_last_used(used)

    already: dict[tuple[str, str], float] = {}
    assert sync_last_used(client, Recorder(), already) == 1
    assert sync_last_used(client, Recorder(), already) == 0
    assert len(calls) == 1 and calls[0][(account_id, issued.key_id)] == 1_800_000_000.0
    assert last_used(service, account_id, issued.key_id) is not None


def test_scheduler_warns_once_when_the_database_cannot_be_opened(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def opener() -> Any:
        attempts.append(1)
        raise RuntimeError("database is down")

    scheduler = LastUsedScheduler(interval_s=3600, opener=opener)
    with caplog.at_level(logging.WARNING, logger="billing_worker.store_thread"):
        assert scheduler.tick() is None
        assert scheduler.tick() is None
    assert len(attempts) == 2
    assert [r.message for r in caplog.records].count(
        "recording the keys' last-used times: not done, the accounts database cannot be opened: database is down") == 1


def test_scheduler_records_and_closes_its_store(client: redis.Redis, service: AccountService) -> None:
    account_id = service.create_account("Scheduled", "free").account["id"]
    issued, _ = service.issue_key(account_id)
    client.hset(AccountKeys(account_id, 16).buckets, f"k:{issued.key_id}:ts", 1_800_000_000_000)
    closed: list[bool] = []
    store = SimpleNamespace(redis=client, accounts=service, close=lambda: closed.append(True))
    scheduler = LastUsedScheduler(interval_s=0.05, opener=lambda: store)
    scheduler.start()
    try:
        assert scheduler.stopped.wait(0.5) is False
    finally:
        scheduler.stop()
    assert not scheduler.is_alive() and closed == [True]
    assert last_used(service, account_id, issued.key_id) is not None


@pytest.mark.cluster
def test_collect_scans_every_primary_of_a_cluster(cluster_redis: redis.RedisCluster) -> None:
    expected = {}
    for n in range(40):
        acct = f"acct{n:02d}"
        cluster_redis.hset(AccountKeys(acct, 16).buckets, mapping={"k:key1:ts": 1_800_000_000_000 + n * 1000,
                                                                   "k:key1:tokens": 3, "a:ts": 1})
        expected[(acct, "key1")] = 1_800_000_000.0 + n
    owners = {cluster_redis.get_node_from_key(AccountKeys(a, 16).buckets).name for a, _ in expected}
    assert len(owners) == len(cluster_redis.get_primaries()) > 1          # the keys lie on every primary
    assert collect_last_used(cluster_redis) == expected
