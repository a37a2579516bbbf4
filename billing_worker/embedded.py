"""The worker role in one process: schema migrations, a Dramatiq Worker on the Redis broker, and the
scheduler that enqueues the usage drain every AIHUB_DRAIN_INTERVAL_S.

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
from collections.abc import Iterator

from dramatiq import Worker

from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import BillingWorkerError
from billing_worker.migrate import migrate
from billing_worker.settings import Settings

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


@contextlib.contextmanager
def embedded_worker(settings: Settings | None = None) -> Iterator[None]:
    settings = settings or Settings.from_env()
    with ClickHouse(settings.clickhouse_url) as ch:
        report = migrate(ch, settings.schema_dir, cluster=settings.clickhouse_cluster)
    log.info("ClickHouse schema: %d applied, %d already applied", len(report.applied), len(report.already_applied))
    from billing_worker import actors
    worker = Worker(actors.broker, worker_threads=1, worker_timeout=500)
    worker.start()
    scheduler = DrainScheduler(settings.drain_interval_s)
    scheduler.start()
    try:
        yield
    finally:
        scheduler.stop()
        worker.stop(timeout=30_000)
        try:
            last_drain()
        finally:
            actors.close_resources()


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
    with embedded_worker(settings):
        done.wait()
    return 0
