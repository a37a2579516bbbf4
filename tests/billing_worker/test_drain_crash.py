"""A worker killed with SIGKILL between INSERT and XACK: after a restart nothing is lost or counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import orjson
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.migrate import migrate
from billing_worker.settings import REPO_ROOT, Settings
from tests.billing_worker.test_drain import db_totals, pending
from tests.billing_worker.usage_factory import make_entry, totals, write_entries


def run_drain(settings: Settings, **env: str) -> subprocess.CompletedProcess[bytes]:
    environ = {**os.environ, "REDIS_URL": settings.redis_url, "CLICKHOUSE_URL": settings.clickhouse_url,
               "AIHUB_DRAIN_BATCH_SIZE": "100", **env}
    return subprocess.run([sys.executable, "-m", "billing_worker", "drain", "--quiet"], cwd=REPO_ROOT,
                          env=environ, capture_output=True, timeout=120, check=False)


def test_sigkill_between_insert_and_ack(r: redis.Redis, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(1_000)]
    write_entries(r, entries)
    with ClickHouse(settings.clickhouse_url) as ch:
        migrate(ch, settings.schema_dir)
    # the chDB directory now belongs to the worker process: one process per directory

    killed = run_drain(settings, AIHUB_DRAIN_FAULT="kill-after-insert", AIHUB_DRAIN_CONSUMER="victim")
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    victim = sum(c["pending"] for s in r.scan_iter("{s:*}:usage") for c in r.xinfo_consumers(s, "drain"))
    assert victim == pending(r) >= 100  # the inserted batch was never acknowledged
    with ClickHouse(settings.clickhouse_url) as ch:
        assert ch.query("SELECT count() FROM usage_rows")[0][0] == 100  # ... but it is in ClickHouse

    restarted = run_drain(settings, AIHUB_DRAIN_CONSUMER="rescuer", AIHUB_DRAIN_CLAIM_IDLE_MS="0")
    assert restarted.returncode == 0, restarted.stderr.decode()
    stats = orjson.loads(restarted.stdout.splitlines()[-1])
    assert stats["reclaimed"] >= 100 and stats["read"] == 1_000

    assert pending(r) == 0
    with ClickHouse(settings.clickhouse_url) as ch:
        assert db_totals(ch) == totals(entries)
        unique, rows = ch.query("SELECT uniqExact(rid), count() FROM usage_rows FINAL")[0]
        assert unique == rows == 1_000
