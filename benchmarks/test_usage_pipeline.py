"""Usage pipeline benchmarks (excluded from the default run): `pytest benchmarks -m benchmark -s`.

- drain throughput: 1M contract-conformant entries in the 16 shard streams -> embedded chDB.
- query latency: monthly per-account aggregates over 10M rows generated in ClickHouse with numbers().
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.migrate import migrate
from billing_worker.settings import REPO_ROOT, Settings
from billing_worker.usage_queries import account_totals, cost_by_model, top_models, usage_lines
from gateway.keys import shard_of, usage_streams
from gateway.redis_server import RedisServer

DRAIN_ROWS = int(os.environ.get("BENCH_DRAIN_ROWS", "1000000"))
# Batch sizes measured (entries per XREADGROUP batch and INSERT): the setting's default, and a larger one.
DRAIN_BATCHES = [int(b) for b in os.environ.get("BENCH_DRAIN_BATCH", "10000,25000").split(",")]
DRAIN_TARGET = 100_000
QUERY_ROWS = int(os.environ.get("BENCH_QUERY_ROWS", "10000000"))
ACCOUNTS = 1000

# Server-side generator, so filling Redis does not dominate the benchmark (benchmark-only script).
FILL_LUA = """
local start, count, naccts = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local models = {'gpt-4o-mini', 'gpt-4o', 'o3-mini', 'claude-sonnet', 'llama3:70b'}
for i = start, start + count - 1 do
  local a = i % naccts
  local ts = 1793491200000 + (i % 2592000) * 1000
  redis.call('XADD', KEYS[tonumber(ARGV[4 + a]) + 1], '*',
    'rid', string.format('req_%012d', i), 'acct', 'acct' .. a, 'key', 'k' .. (i % 3), 'plan', 'pro',
    'model', models[(i % 5) + 1], 'upstream', 'openai', 'period', '2026-11',
    'ts_start_ms', ts, 'ts_end_ms', ts + 250, 'status', 200, 'outcome', 'ok', 'calls', 1, 'overage', 0,
    'pt', 100 + i % 900, 'ct', 20 + i % 300, 'cached', i % 64, 'reasoning', 0,
    'cost_nanos', 1000000 + (i % 5000) * 17, 'latency_ms', 200 + i % 800)
end
return count
"""


def fill_streams(client: redis.Redis, rows: int, shards: int = 16) -> float:
    started = time.perf_counter()
    script = client.register_script(FILL_LUA)
    shard_args = [shard_of(f"acct{a}", shards) for a in range(ACCOUNTS)]
    for start in range(0, rows, 20_000):
        script(keys=usage_streams(shards), args=[start, min(20_000, rows - start), ACCOUNTS, *shard_args])
    return time.perf_counter() - started


@pytest.fixture
def bench_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def bench_ch(tmp_path: Path) -> Iterator[ClickHouse]:
    """A scratch embedded ClickHouse, migrated."""
    with ClickHouse(f"chdb://{tmp_path / 'chdb'}") as ch:
        migrate(ch, REPO_ROOT / "clickhouse")
        yield ch


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of another one from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak RSS (VmHWM) afresh (Linux: clear_refs 5), so a second drain in this process reports its own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), or of the whole process when /proc has none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return maxrss_mb()


@pytest.mark.benchmark
@pytest.mark.parametrize("batch", DRAIN_BATCHES)
def test_drain_throughput(bench_redis: RedisServer, bench_ch: ClickHouse, batch: int) -> None:
    client = redis.Redis.from_url(bench_redis.url)
    try:
        fill_s = fill_streams(client, DRAIN_ROWS)
        settings = Settings(redis_url=bench_redis.url, clickhouse_url=bench_ch.url, drain_consumer="bench",
                            drain_batch_size=batch)
        assert bench_redis.proc is not None
        redis_pid = bench_redis.proc.pid
        reset_peak_rss()
        rss_before, cpu_before, redis_before, load = peak_rss_mb(), cpu_s(), cpu_s(redis_pid), os.getloadavg()[0]
        stats = drain_once(client, bench_ch, settings)
        rss_after, cpu_used, redis_used = peak_rss_mb(), cpu_s() - cpu_before, cpu_s(redis_pid) - redis_before
    finally:
        client.close()
    assert stats.inserted == DRAIN_ROWS
    assert bench_ch.query("SELECT count() FROM usage_rows FINAL")[0][0] == DRAIN_ROWS
    print(f"\n[drain] {DRAIN_ROWS:,} rows (filled in {fill_s:.1f}s) drained in {stats.elapsed_s:.2f}s = "
          f"{stats.rows_per_s:,.0f} rows/s, batch {settings.drain_batch_size}, {stats.batches} batches; "
          f"peak RSS {rss_after:,.0f} MB (before the drain {rss_before:,.0f} MB); "
          f"CPU: worker {cpu_used:.1f}s ({cpu_used / DRAIN_ROWS * 1e6:.1f} us/row), redis-server {redis_used:.1f}s; "
          f"load average at start {load:.2f} on {os.cpu_count()} CPUs; "
          f"target {DRAIN_TARGET:,} rows/s: {'met' if stats.rows_per_s >= DRAIN_TARGET else 'NOT met'}")


GENERATE_SQL = """
INSERT INTO usage_rows (rid, acct, key_id, plan, model, upstream, period, outcome, ts_start_ms, ts_end_ms, status,
                        calls, overage, pt, ct, cached, reasoning, cost_nanos, latency_ms, stream_id)
SELECT concat('req_', toString(number)), concat('acct', toString(number % {accounts:UInt32})),
       concat('k', toString(number % 3)), 'pro',
       ['gpt-4o-mini', 'gpt-4o', 'o3-mini', 'claude-sonnet', 'llama3:70b'][number % 5 + 1], 'openai', '2026-11', 'ok',
       1793491200000 + (number % 2592000) * 1000, 1793491200250 + (number % 2592000) * 1000, 200,
       1, 0, 100 + number % 900, 20 + number % 300, number % 64, 0, 1000000 + (number % 5000) * 17,
       200 + number % 800, concat(toString(number), '-0')
FROM numbers({first:UInt64}, {count:UInt64})
"""


def timed(fn: Callable[[], Any], rounds: int = 7) -> tuple[float, float]:
    fn()  # warm
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000, max(samples) * 1000


@pytest.mark.benchmark
def test_query_latency_over_10m_rows(bench_ch: ClickHouse) -> None:
    started = time.perf_counter()
    for first in range(0, QUERY_ROWS, 2_000_000):
        bench_ch.command(GENERATE_SQL, {"accounts": ACCOUNTS, "first": first,
                                        "count": min(2_000_000, QUERY_ROWS - first)})
    # 1% replayed rows (a crash between INSERT and XACK), so FINAL has duplicates to collapse
    bench_ch.command(GENERATE_SQL, {"accounts": ACCOUNTS, "first": 0, "count": QUERY_ROWS // 100})
    gen_s = time.perf_counter() - started
    raw = bench_ch.query("SELECT count() FROM usage_rows")[0][0]
    one = account_totals(bench_ch, "2026-11", "acct42")
    assert one[0].calls == QUERY_ROWS // ACCOUNTS
    cases: dict[str, Callable[[], Any]] = {
        "account_totals(one account)": lambda: account_totals(bench_ch, "2026-11", "acct42"),
        "cost_by_model(one account)": lambda: cost_by_model(bench_ch, "2026-11", "acct42"),
        "usage_lines(one account, day x model x key)": lambda: usage_lines(bench_ch, "2026-11", acct="acct42"),
        "account_totals(all accounts, admin)": lambda: account_totals(bench_ch, "2026-11"),
        "top_models(all accounts)": lambda: top_models(bench_ch, "2026-11"),
        "raw sum without FINAL (not dedup-safe, reference)": lambda: bench_ch.query(
            "SELECT sum(calls), sum(cost_nanos) FROM usage_rows WHERE period = '2026-11' AND acct = 'acct42'"),
    }
    print(f"\n[query] {raw:,} rows ({QUERY_ROWS:,} unique + 1% replayed) generated in {gen_s:.1f}s")
    for name, fn in cases.items():
        median_ms, worst_ms = timed(fn)
        print(f"[query] {name}: median {median_ms:,.1f} ms, max {worst_ms:,.1f} ms")
    print(f"[query] peak RSS {maxrss_mb():,.0f} MB")
