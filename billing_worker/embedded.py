"""The worker role in one process: schema migrations, a Dramatiq Worker on the Redis broker, the
scheduler that enqueues the usage drain every AIHUB_DRAIN_INTERVAL_S, and the one that records the API
keys' last-used times in the system-of-record database every minute (billing_worker.last_used).

`make up` runs it inside the gateway process (with chDB only one process may own the data directory);
`python -m billing_worker worker` runs it alone (docker-compose, or beside gateway processes).

Stopping, in this order, while Redis is still up: the scheduler, the Dramatiq worker (the drain it may be
running finishes), then one last drain of the usage streams in this thread, so that every usage row
settled before the stop is in ClickHouse; the caller stops its Redis only afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from dramatiq import Worker

from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import BillingWorkerError
from billing_worker.last_used import INTERVAL_S, sync_last_used
from billing_worker.migrate import migrate
from billing_worker.settings import Settings
from billing_worker.store_thread import StoreThread

log = logging.getLogger(__name__)


class DrainScheduler(threading.Thread):
    """Enqueues `drain_usage` every `interval_s` until stopped (the actor skips overlapping drains)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="drain-scheduler", daemon=True)
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        from billing_worker.actors import drain_usage
        while not self.stopped.wait(self.interval_s):
            try:
                drain_usage.send()
            except Exception:   # the broker's Redis may be restarting; try again next tick
                log.exception("could not enqueue the usage drain")

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


class CloseScheduler(StoreThread):
    """At start and every `interval_s`: applies the plan changes that are due (a downgrade at 00:00 UTC on the
    1st) and, when a month has ended without a completed close, enqueues `close_due_periods` (so a close missed
    while the worker was down runs when it starts)."""

    purpose = "the monthly close check"

    def __init__(self, interval_s: float = 60.0, opener: Callable[[], Any] | None = None) -> None:
        super().__init__("close-scheduler", interval_s, opener, run_first=True)
        self.sent: set[str] = set()

    def work(self, store: Any) -> list[str]:
        from billing_worker.actors import close_due_periods
        from billing_worker.close import due_periods
        store.accounts.apply_scheduled_changes()
        due = [p for p in due_periods(store) if p not in self.sent]
        if due:
            close_due_periods.send()
            self.sent.update(due)
        return due


class LastUsedScheduler(StoreThread):
    """Every `interval_s`, copies the keys' last-used times from Redis into the database; one last sync runs
    when the scheduler stops."""

    purpose = "recording the keys' last-used times"

    def __init__(self, interval_s: float = INTERVAL_S, opener: Callable[[], Any] | None = None) -> None:
        super().__init__("last-used-scheduler", interval_s, opener, final_tick=True)
        self.synced: dict[tuple[str, str], float] = {}

    def work(self, store: Any) -> int | None:
        """One sync; the rows changed, or None when Redis or the database could not be used."""
        try:
            return sync_last_used(store.redis, store.accounts, self.synced)
        except Exception:           # Redis restarting, database busy: try again next tick
            log.warning("could not record the keys' last-used times", exc_info=True)
            return None


@contextlib.contextmanager
def embedded_worker(settings: Settings | None = None) -> Iterator[None]:
    settings = settings or Settings.from_env()
    with ClickHouse(settings.clickhouse_url) as ch:
        report = migrate(ch, settings.schema_dir, cluster=settings.clickhouse_cluster)
        log.info("ClickHouse schema: %d applied, %d already applied", len(report.applied),
                 len(report.already_applied))
        rebuild_counters_at_start(ch, settings)
    from billing_worker import actors
    worker = Worker(actors.broker, worker_threads=1, worker_timeout=500)
    worker.start()
    scheduler = DrainScheduler(settings.drain_interval_s)
    scheduler.start()
    last_used = LastUsedScheduler()
    last_used.start()
    closer = CloseScheduler()
    closer.start()
    from billing_worker.payments import PaymentsScheduler
    collector = PaymentsScheduler()
    collector.start()
    from billing_worker.notify import NotificationScheduler
    notifier = NotificationScheduler()      # quota, invoice and anomaly notifications; email and webhook
    notifier.start()
    try:
        yield
    finally:
        scheduler.stop()
        collector.stop()
        closer.stop()
        notifier.stop()
        last_used.stop()
        worker.stop(timeout=30_000)
        try:
            last_drain()
        finally:
            actors.close_resources()


def rebuild_counters_at_start(ch: ClickHouse, settings: Settings) -> None:
    """Raises this month's counters in Redis to what ClickHouse holds (never lowers one): a Redis that lost its
    data does not hand out a quota again once the worker runs (billing_worker.counters)."""
    import time

    from billing_worker.counters import rebuild_counters
    from gateway.catalog import load_catalog
    from gateway.quota.periods import DAY_S, period_of
    from gateway.settings import Settings as GatewaySettings
    gateway = GatewaySettings.from_env()
    now = time.time()
    period = period_of(now)
    client = settings.redis_client()
    try:
        found = rebuild_counters(ch, client, period.name, settings.shards,
                                 period.end_s + gateway.period_grace_days * DAY_S,
                                 catalog=load_catalog(gateway.catalog_path), now_s=now)
        if found.get("accounts_raised"):
            log.warning("counters of %d accounts were behind ClickHouse and were raised: %s",
                        found["accounts_raised"], found)
    except Exception as exc:        # Redis restarting: the gateway still works; `aihub resync --counters` redoes it
        log.warning("counters not rebuilt at start: %s", exc)
    finally:
        client.close()


def last_drain() -> None:
    """Drains the usage streams once more, after the Dramatiq worker stopped (the stop's last step)."""
    from billing_worker import actors
    try:
        stats = actors.drain_now(wait=True)
    except BillingWorkerError as exc:     # the rows stay pending in Redis for the next drain
        log.warning("last drain before stopping failed, rows stay pending: %s", exc)
        return
    if stats is not None:
        log.info("last drain before stopping: %s", stats.as_dict())


def run_worker(settings: Settings | None = None) -> int:
    """Runs the worker role until SIGINT or SIGTERM, then stops as `embedded_worker` does."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    from gateway.cli import resync_at_start
    from gateway.runtime import stack_environ
    from gateway.settings import environment
    resync_at_start(stack_environ(environment())[0])   # the database is the record: Redis follows it
    with embedded_worker(settings):
        done.wait()
    return 0
