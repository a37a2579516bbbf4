"""Opens the system of record for a process: the database (migrated), the Redis projection and the service.

`open_accounts(environ)` is what the CLI, `make up`, the gateway's and the worker's start-up call; the caller
closes the returned Store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate
from billing.errors import StoreUnavailable
from billing.projection import Projector, ResyncReport, resync
from billing.settings import Settings as DatabaseSettings
from gateway.catalog import load_catalog
from gateway.settings import Settings as GatewaySettings


@dataclass
class Store:
    engine: Engine
    redis: Any
    accounts: AccountService
    projector: Projector

    def resync(self, prune: bool = False) -> ResyncReport:
        return resync(self.accounts.sessions, self.projector, prune=prune)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.redis.close()
        self.engine.dispose()


def redis_client(settings: GatewaySettings) -> Any:
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_url)
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)


def open_accounts(environ: Mapping[str, str] | None = None, clock: Callable[[], float] | None = None,
                  project: bool = True) -> Store:
    """The migrated database, a Redis client and the write-through AccountService. StoreUnavailable when the
    database cannot be opened; Redis may be down (changes are then saved and projected later). `project=False`:
    changes are saved only (no Redis is known; the next resync projects them)."""
    gateway_settings = GatewaySettings.from_env(environ)
    database = DatabaseSettings.from_env(environ)
    engine = make_engine(database.database_url)
    try:
        migrate(engine)
    except StoreUnavailable:
        engine.dispose()
        raise
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreUnavailable(f"the database is not reachable: {exc}") from None
    client = redis_client(gateway_settings)
    catalog = load_catalog(gateway_settings.catalog_path)
    cheapest = min(catalog.plans.values(), key=lambda p: p.price_minor).name
    projector = Projector(client, gateway_settings.shards, **({"clock": clock} if clock else {}),
                          restricted_plan=cheapest)
    service = AccountService(sessions(engine), projector if project else None, catalog,
                             **({"clock": clock} if clock else {}))
    service.require_payment_method = database.require_payment_method
    return Store(engine, client, service, projector)
