"""The drain: usage streams -> ClickHouse, at least once, deduplicated by request id.

Per batch: read entries with a consumer group, validate and convert each, load the valid ones with ONE
INSERT, then dead-letter the invalid ones and XACK everything in one MULTI (one per stream on a cluster,
`redis_streams.settle_all`). The next batch's first read is sent before this one is converted. An entry is
acknowledged only after its row is in ClickHouse (or in the dead-letter stream), so a crash or an
unavailable ClickHouse leaves it pending; it is read again (by this consumer, or reclaimed by another
with XAUTOCLAIM) and inserted again, and `usage_rows` (ReplacingMergeTree by rid, read with FINAL)
counts it once. A batch ClickHouse refuses for its data is bisected down to the refused rows, which
are dead-lettered with ClickHouse's message. Nothing is ever dropped.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from billing_worker import redis_streams as rs
from billing_worker.backoff import backoff_delay
from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import ClickHouseError, ClickHouseRejected, ClickHouseUnavailable, InvalidUsageEntry
from billing_worker.settings import Settings
from billing_worker.usage_entry import COLUMNS, to_row
from gateway.keys import usage_streams

log = logging.getLogger(__name__)

TABLE = "usage_rows"


@dataclass
class DrainStats:
    batches: int = 0
    read: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    vanished: int = 0  # pending ids whose entry no longer exists in the stream
    insert_retries: int = 0
    trimmed: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "started"} | {"rows_per_s": round(self.rows_per_s)}


Progress = Callable[[DrainStats], None]


@dataclass
class _Batch:
    chunks: Sequence[rs.Chunk]
    blocks: list[bytes] = field(default_factory=list)  # TabSeparated rows, each block newline-terminated
    origin: list[tuple[str, list[Any]]] = field(default_factory=list)  # per block: stream, the rows' entries
    dead: dict[str, list[rs.DeadLetter]] = field(default_factory=dict)  # stream -> entries to dead-letter
    rows: int = 0

    def add(self, stream: str, entries: list[Any], block: bytes) -> None:
        self.blocks.append(block)
        self.origin.append((stream, entries))
        self.rows += len(entries)

    def row_list(self) -> tuple[list[bytes], list[tuple[str, bytes, Any]]]:
        """Every row apart, with its (stream, entry id, fields): to find the rows ClickHouse refuses."""
        rows = [row for block in self.blocks for row in block.split(b"\n")[:-1]]
        origin = [(stream, entry[0], entry[1]) for stream, entries in self.origin for entry in entries]
        return rows, origin

    def settles(self) -> list[rs.Settle]:
        """Per stream (a stream may come in several chunks): the ids to acknowledge and the dead letters."""
        ids: dict[str, list[bytes]] = {}
        for stream, entries in self.chunks:
            ids.setdefault(stream, []).extend(entry[0] for entry in entries)
        return [(stream, stream_ids, self.dead.get(stream, [])) for stream, stream_ids in ids.items()]


@dataclass
class _Drain:
    redis: rs.Client
    ch: ClickHouse
    settings: Settings
    consumer: str
    sleep: Callable[[float], None]
    progress: Progress | None
    executor: ThreadPoolExecutor | None = None
    in_flight: Future[None] | None = None
    stats: DrainStats = field(default_factory=DrainStats)

    @property
    def group(self) -> str:
        return self.settings.drain_group

    def budget_left(self, max_batches: int, held: int = 0) -> bool:
        """Another batch may be read (`held`: batches read and not processed yet)."""
        submitted = self.stats.batches + (self.in_flight is not None) + held
        return max_batches <= 0 or submitted < max_batches

    def process(self, chunks: Sequence[rs.Chunk]) -> None:
        """Convert a batch here, then load and acknowledge it in the background (one batch in flight):
        reading and converting the next batch overlaps the INSERT and the XACKs of this one. A chunk is
        converted in one pass unless one of its entries is invalid or deleted; then entry by entry."""
        batch = _Batch(chunks)
        for stream, entries in chunks:
            if not entries:
                continue
            try:
                batch.add(stream, entries, b"\n".join([to_row(e[0], e[1]) for e in entries]) + b"\n")
                continue
            except (InvalidUsageEntry, TypeError):   # TypeError: a deleted entry's fields are None
                pass
            rows: list[bytes] = []
            valid: list[Any] = []
            for entry in entries:
                entry_id, flat = entry
                if flat is None:  # a pending id whose entry was deleted: nothing to load, just ack
                    self.stats.vanished += 1
                    continue
                try:
                    rows.append(to_row(entry_id, flat))
                except InvalidUsageEntry as exc:
                    batch.dead.setdefault(stream, []).append((entry_id, flat, f"invalid: {exc.reason}"))
                    continue
                valid.append(entry)
            if rows:
                batch.add(stream, valid, b"\n".join(rows) + b"\n")
        self.flush()
        if self.executor is None:
            self.load(batch)
        else:
            self.in_flight = self.executor.submit(self.load, batch)

    def flush(self) -> None:
        """Wait for the batch in flight; its failure (ClickHouse down, Redis down) is raised here."""
        job, self.in_flight = self.in_flight, None
        if job is not None:
            job.result()

    def load(self, batch: _Batch) -> None:
        """INSERT the rows (one statement), then dead-letter and XACK. Never XACK first."""
        refused: list[tuple[str, bytes, Any, str]] = []
        if batch.rows:
            refused = self.insert_batch(batch)
            for stream, entry_id, flat, reason in refused:
                batch.dead.setdefault(stream, []).append((entry_id, flat, reason))
            if self.settings.drain_fault == "kill-after-insert":
                os.kill(os.getpid(), signal.SIGKILL)  # tests: die between INSERT and XACK
        rs.settle_all(self.redis, self.group, batch.settles())
        self.stats.dead_lettered += sum(len(dead) for dead in batch.dead.values())
        self.stats.read += sum(len(entries) for _, entries in batch.chunks)
        self.stats.inserted += batch.rows - len(refused)
        self.stats.batches += 1
        self.stats.elapsed_s = time.monotonic() - self.stats.started
        if self.progress is not None:
            self.progress(self.stats)

    def insert_batch(self, batch: _Batch) -> list[tuple[str, bytes, Any, str]]:
        """Insert the batch; returns the (stream, entry id, fields, reason) of rows ClickHouse refused."""
        try:
            self.insert_with_retry(b"".join(batch.blocks))
            return []
        except ClickHouseRejected as exc:
            rows, origin = batch.row_list()
            return [(*origin[index], reason) for index, reason in self.split(rows, 0, len(rows), exc)]

    def insert(self, rows: list[bytes], lo: int, hi: int) -> list[tuple[int, str]]:
        """Insert rows[lo:hi]; returns the (index, reason) of rows ClickHouse refused for their data."""
        try:
            self.insert_with_retry(b"\n".join(rows[lo:hi]) + b"\n")
            return []
        except ClickHouseRejected as exc:
            return self.split(rows, lo, hi, exc)

    def split(self, rows: list[bytes], lo: int, hi: int, exc: ClickHouseRejected) -> list[tuple[int, str]]:
        """rows[lo:hi] were refused with `exc`: bisect down to the refused rows."""
        if hi - lo == 1:
            name = f" {exc.name}" if exc.name else ""
            return [(lo, f"clickhouse rejected{name} (code {exc.code}): {str(exc)[:500]}")]
        mid = (lo + hi) // 2
        return self.insert(rows, lo, mid) + self.insert(rows, mid, hi)

    def insert_with_retry(self, data: bytes) -> None:
        s = self.settings
        for attempt in range(s.drain_insert_attempts):
            try:
                self.ch.insert_tsv(TABLE, COLUMNS, data)
                return
            except ClickHouseRejected:
                raise
            except ClickHouseError as exc:
                if attempt + 1 >= s.drain_insert_attempts:
                    raise ClickHouseUnavailable(
                        f"insert failed {attempt + 1} times, rows stay pending in the stream: {exc}",
                        code=exc.code, name=exc.name) from None
                delay = backoff_delay(attempt, s.drain_backoff_s, s.drain_backoff_max_s)
                log.warning("ClickHouse insert failed (%s); retry %d in %.2fs", exc, attempt + 1, delay)
                self.stats.insert_retries += 1
                self.sleep(delay)


def drain_once(redis_client: rs.Client, ch: ClickHouse, settings: Settings, *, max_batches: int | None = None,
               progress: Progress | None = None, sleep: Callable[[float], None] = time.sleep) -> DrainStats:
    """Drain every usage shard stream until it is empty (or `max_batches` batches), then trim.

    Order: this consumer's own pending entries, then entries other consumers left pending longer than
    `drain_claim_idle_ms` (XAUTOCLAIM), then new entries. Raises `ClickHouseUnavailable` when the insert
    still fails after `drain_insert_attempts` tries with backoff; the entries stay pending and the
    next call (or another worker, after the idle time) loads them.
    """
    streams = usage_streams(settings.shards)
    d = _Drain(redis_client, ch, settings, settings.consumer, sleep, progress)
    rs.ensure_groups(redis_client, streams, d.group)
    # A second thread loads batches while this one reads; not with a single-connection client (a
    # cluster client always uses pools, one per node).
    if isinstance(redis_client, redis.RedisCluster) or redis_client.connection is None:
        d.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drain-load")
    # The cyclic GC is paused while draining: batches are large, short-lived and free of cycles, and
    # each collection would rescan every live entry (it cost a third of the CPU); refcounting frees them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _drain(d, streams, settings.drain_max_batches if max_batches is None else max_batches)
    finally:
        if d.executor is not None:
            d.executor.shutdown(wait=True)
        if gc_was_enabled:
            gc.enable()
    if settings.drain_trim:
        d.stats.trimmed = sum(rs.trim_acknowledged(redis_client, stream) for stream in streams)
    d.stats.elapsed_s = time.monotonic() - d.stats.started
    return d.stats


def _drain(d: _Drain, streams: list[str], budget: int) -> None:
    limit = d.settings.drain_batch_size
    while d.budget_left(budget):
        chunks = rs.read_own_pending(d.redis, streams, d.group, d.consumer, limit)
        if not chunks:
            break
        d.process(chunks)
        d.flush()  # the next read of our own pending entries must not see this batch again

    for stream in streams:
        cursor = "0-0"
        while d.budget_left(budget):
            cursor, entries, vanished = rs.claim_stale(
                d.redis, stream, d.group, d.consumer, d.settings.drain_claim_idle_ms, cursor, limit)
            d.stats.vanished += vanished
            if entries:
                d.stats.reclaimed += len(entries)
                d.process([(stream, entries)])
            if cursor == "0-0":
                break

    reader = rs.NewEntries(d.redis, streams, d.group, d.consumer, limit)
    try:
        while d.budget_left(budget):
            chunks = reader.read()
            if not chunks:
                break
            if d.budget_left(budget, held=1):
                reader.prefetch()  # Redis builds the next batch while this one is converted
            d.process(chunks)
    finally:
        reader.close()
    d.flush()
