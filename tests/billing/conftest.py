"""System-of-record fixtures: a migrated database (SQLite file and private PostgreSQL) and the write-through
account service projecting into a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate
from billing.projection import Projector
from gateway.catalog import Catalog
from tests.quota.conftest import PinnedClock


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: Engine) -> sessionmaker[Session]:
    return sessions(engine)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def service(db: sessionmaker[Session], r: redis.Redis, catalog: Catalog) -> AccountService:
    clock = PinnedClock()
    return AccountService(db, Projector(r, 16, clock), catalog, clock)
