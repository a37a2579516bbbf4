"""ClickHouse down: rows stay pending in the stream, the drain backs off, and they land once it is back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from billing_worker.backoff import backoff_delay
from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.errors import ClickHouseUnavailable
from billing_worker.migrate import migrate
from billing_worker.settings import Settings
from gateway.redis_server import free_port
from tests.billing_worker.test_drain import db_totals, pending
from tests.billing_worker.usage_factory import make_entry, totals, write_entries


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert [backoff_delay(a, 0.5, 30, rand=lambda: 1.0) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(3, 0.5, 30, rand=lambda: 0.0) == 2.0  # at least half of the ceiling
    assert backoff_delay(1000, 0.5, 30, rand=lambda: 1.0) == 30


def test_unreachable_server_keeps_rows_pending_then_they_land(r: redis.Redis, settings: Settings,
                                                              chdb_url: str) -> None:
    entries = [make_entry(i) for i in range(700)]
    write_entries(r, entries)
    delays: list[float] = []
    down = ClickHouse(f"http://default:@127.0.0.1:{free_port()}/default", connect_timeout_s=1)
    with pytest.raises(ClickHouseUnavailable, match="rows stay pending"):
        drain_once(r, down, settings.replace(drain_insert_attempts=4), sleep=delays.append)
    down.close()
    assert len(delays) == 3 and delays[0] < delays[-1] <= settings.drain_backoff_max_s
    assert pending(r) == 700  # both batches were delivered (the 2nd read during the 1st's retries), none acked
    assert sum(r.xlen(s) for s in r.scan_iter("{s:*}:usage")) == 700  # nothing trimmed
    with ClickHouse(chdb_url) as ch:  # "it is back": same consumer, picks its pending entries first
        migrate(ch, settings.schema_dir)
        stats = drain_once(r, ch, settings)
        assert stats.inserted == 700
        assert db_totals(ch) == totals(entries) and pending(r) == 0


def test_unopenable_chdb_directory_is_unavailable(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    write_entries(r, [make_entry(i) for i in range(10)])
    with ClickHouse(f"chdb://{tmp_path / 'a-file' / 'chdb'}") as broken, pytest.raises(ClickHouseUnavailable):
        drain_once(r, broken, settings, sleep=lambda _: None)
    assert pending(r) == 10


class FlakyClickHouse(ClickHouse):
    """A real embedded ClickHouse whose first `failures` inserts fail as if the server were away."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def insert_tsv(self, table: str, columns: Sequence[str], data: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ClickHouseUnavailable("connection refused (injected)")
        super().insert_tsv(table, columns, data)


def test_drain_retries_until_clickhouse_answers(r: redis.Redis, ch: ClickHouse, settings: Settings) -> None:
    entries = [make_entry(i) for i in range(300)]
    write_entries(r, entries)
    delays: list[float] = []
    with FlakyClickHouse(settings.clickhouse_url, failures=2) as flaky:
        stats = drain_once(r, flaky, settings, sleep=delays.append)
    assert stats.insert_retries == 2 and len(delays) == 2
    assert stats.inserted == 300 and db_totals(ch) == totals(entries)
