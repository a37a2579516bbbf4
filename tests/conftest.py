"""Shared fixtures: real redis-server processes on free loopback ports, never a mock."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.accounts import AccountStore
from gateway.catalog import Catalog, load_catalog
from gateway.redis_server import RedisCluster, RedisServer
from gateway.settings import ROOT
from tests.pg_server import PostgresServer
from tests.support import GatewayThread, settings_for


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's local state (the SQLite system of record, runtime file, spool) under its own tmp_path, never
    the repository's .var."""
    monkeypatch.setenv("AIHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a flushed private Redis; every test starts from an empty server."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the session, started only when a test asks for it."""
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database: a SQLite file, or a fresh database on the private PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/aihub.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    yield url
    with contextlib.suppress(Exception):
        server.drop_database(name)


UPSTREAM_KEY = "sk-upstream-secret-for-tests"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[Any]:
    from fakes.openai_upstream import FakeUpstream

    fake = FakeUpstream(api_key=UPSTREAM_KEY)
    fake.start_in_thread()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fake_upstream: Any) -> Any:
    """The fake upstream, its recorded requests and counters cleared."""
    fake_upstream.reset()
    return fake_upstream


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(ROOT / "config" / "catalog.toml")


@pytest.fixture
def store(redis_url: str, catalog: Catalog) -> Iterator[AccountStore]:
    client = redis.Redis.from_url(redis_url)
    yield AccountStore(client, catalog, 16)
    client.close()


@pytest.fixture
def make_gateway(redis_url: str, upstream: Any, tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def make(catalog: Catalog | None = None, clock: Any = None, **overrides: Any) -> GatewayThread:
        settings = settings_for(redis_url, upstream.url, UPSTREAM_KEY, tmp_path, **overrides)
        extra = {"clock": clock} if clock is not None else {}
        gateway = GatewayThread(settings, catalog, **extra).start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return make_gateway()
