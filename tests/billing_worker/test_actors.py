"""The Dramatiq actor through a real RedisBroker and an in-process Worker."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import dramatiq
import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import ClickHouseUnavailable, StreamError
from billing_worker.settings import Settings
from tests.billing_worker.test_drain import db_totals
from tests.billing_worker.usage_factory import make_entry, totals, write_entries


@pytest.fixture
def actors(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[ModuleType]:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    monkeypatch.setenv("AIHUB_DRAIN_CONSUMER", "actor")
    sys.modules.pop("billing_worker.actors", None)
    module = importlib.import_module("billing_worker.actors")  # settings are read once, here
    yield module
    module.close_resources()
    module.broker.close()
    sys.modules.pop("billing_worker.actors", None)


def test_drain_actor_loads_the_streams(actors: ModuleType, r: redis.Redis, ch: ClickHouse) -> None:
    entries = [make_entry(i) for i in range(600)]
    write_entries(r, entries)
    actors.drain_usage.send()
    worker = dramatiq.Worker(actors.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        actors.broker.join(actors.QUEUE, timeout=60_000)
        worker.join()
    finally:
        worker.stop()
    assert db_totals(ch) == totals(entries)


def test_only_waiting_failures_are_retried(actors: ModuleType) -> None:
    assert actors._retry_when(0, ClickHouseUnavailable("down"))
    assert actors._retry_when(3, StreamError("redis down"))
    assert not actors._retry_when(actors.MAX_RETRIES, ClickHouseUnavailable("down"))
    assert not actors._retry_when(0, ValueError("bug"))
