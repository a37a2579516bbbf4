"""Dramatiq actors, kept thin: the logic lives in plain modules that tests call directly.

Run with `dramatiq billing_worker.actors --processes 1` when CLICKHOUSE_URL is embedded chDB (one process
owns the data directory); with a ClickHouse server any number of processes may run. Settings are read
once, at import; the Redis client and the ClickHouse connection are opened on first use and shared by
the worker threads of the process.
"""

from __future__ import annotations

import logging
import threading

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import DrainStats, drain_once
from billing_worker.errors import ClickHouseUnavailable, ConfigError, StreamError
from billing_worker.settings import Settings

log = logging.getLogger(__name__)

QUEUE = "billing"
MAX_RETRIES = 20

settings = Settings.from_env()
if settings.redis_cluster and not settings.broker_url:
    raise ConfigError("AIHUB_BROKER_URL: Dramatiq needs a single Redis server when REDIS_CLUSTER is set")
broker = RedisBroker(url=settings.broker_url or settings.redis_url)  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)

_lock = threading.Lock()
_drain_lock = threading.Lock()
_redis: redis.Redis | redis.RedisCluster | None = None
_clickhouse: ClickHouse | None = None


def resources() -> tuple[redis.Redis | redis.RedisCluster, ClickHouse]:
    global _redis, _clickhouse
    with _lock:
        if _redis is None:
            _redis = settings.redis_client()  # a RedisCluster client when REDIS_CLUSTER is set
        if _clickhouse is None:
            _clickhouse = ClickHouse(settings.clickhouse_url)
        return _redis, _clickhouse


def close_resources() -> None:
    global _redis, _clickhouse
    with _lock:
        if _redis is not None:
            _redis.close()
        if _clickhouse is not None:
            _clickhouse.close()
        _redis, _clickhouse = None, None


def _retry_when(retries: int, exc: BaseException) -> bool:
    """Retry (with Dramatiq's exponential backoff) only what waiting can fix; the rows stay pending."""
    return isinstance(exc, ClickHouseUnavailable | StreamError) and retries < MAX_RETRIES


@dramatiq.actor(queue_name=QUEUE, retry_when=_retry_when, min_backoff=1_000, max_backoff=300_000,
                time_limit=3_600_000)
def drain_usage() -> None:
    """Drain the usage streams once; a drain already running in this process makes this a no-op."""
    stats = drain_now(wait=False)
    if stats is None:
        log.info("a drain is already running in this process")
    elif stats.read:
        log.info("drained %s", stats.as_dict())


def drain_now(wait: bool) -> DrainStats | None:
    """One drain in this thread; None when another one runs in this process and `wait` is false (with
    `wait`, after that one ends: the last drain of a stop)."""
    if not _drain_lock.acquire(blocking=wait):
        return None
    try:
        client, ch = resources()
        return drain_once(client, ch, settings)
    finally:
        _drain_lock.release()


@dramatiq.actor(queue_name=QUEUE, retry_when=_retry_when, min_backoff=60_000, max_backoff=3_600_000,
                time_limit=3_600_000)
def close_due_periods() -> None:
    """Closes every ended month without a completed close (billing_worker.close), after a drain."""
    from billing.store import open_accounts
    from billing_worker.close import close, due_periods
    drain_now(wait=True)
    store = open_accounts()
    try:
        for period in due_periods(store):
            report = close(store, resources()[1], period)
            log.info("closed %s: %d invoices issued, %d existed", period, len(report.issued), report.existing)
    finally:
        store.close()


@dramatiq.actor(queue_name=QUEUE, max_retries=5, min_backoff=5_000, max_backoff=300_000)
def process_provider_event(event_id: int) -> None:
    """Applies one recorded payment-provider webhook event (billing.provider_events; idempotent)."""
    from billing.provider_events import apply
    from billing.store import open_accounts
    from billing_worker.payments import services
    store = open_accounts()
    try:
        payments, _ = services(store)
        log.info("provider event %d: %s", event_id, apply(store.accounts.sessions, event_id, payments))
    finally:
        store.close()
