"""Quota engine cost: admit, settle and admit+settle round trips against Redis PING from the same
redis.asyncio client in the same run (uvloop), one at a time and with 50 concurrent tasks; then admits/s
with 50 tasks, with the engine's same-tick pipelining (ScriptBatcher) and without it (max_batch=1).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio
import uvloop

from benchmarks.support import (
    MODEL,
    STRICT,
    bench_catalog,
    percentile,
    private_redis,
    seed_account,
    table,
    verdict,
)
from gateway.catalog import load_catalog
from gateway.keys import ParsedKey, parse_api_key
from gateway.quota.admission import Usage
from gateway.quota.batcher import ScriptBatcher
from gateway.quota.engine import QuotaEngine
from gateway.quota.spool import Spool
from gateway.settings import Settings

SEQUENTIAL_CYCLES = 3000
TASKS = 50
CYCLES_PER_TASK = 200
THROUGHPUT_SECONDS = 3.0
MAX_ADMIT_OVER_PING_P99 = 2.0
USAGE = Usage(True, "ok", 200, 10, 5, 0, 0, 100, 1)
Samples = dict[str, list[int]]


def _rid() -> str:
    return "req_" + uuid.uuid4().hex


async def _cycles(engine: QuotaEngine, key: ParsedKey, cycles: int, samples: Samples) -> None:
    """admit, settle, then PING on the engine's own client; nanoseconds per step."""
    model = engine.catalog.models[MODEL]
    clock = time.perf_counter_ns
    for _ in range(cycles):
        t0 = clock()
        admission = await engine.admit(key, model, _rid(), True)
        t1 = clock()
        await engine.settle(admission, USAGE)
        t2 = clock()
        await engine.client.ping()
        t3 = clock()
        samples["admit"].append(t1 - t0)
        samples["settle"].append(t2 - t1)
        samples["admit+settle"].append(t2 - t0)
        samples["PING"].append(t3 - t2)


async def _rate(tasks: int, seconds: float, step: Callable[[], Awaitable[object]]) -> float:
    """Calls of `step` per second with `tasks` concurrent tasks."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await step()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done / (time.perf_counter() - started)


async def _run(url: str, catalog_path: Path, spool_dir: Path, api_key: str) -> tuple[dict[str, Samples],
                                                                                       dict[str, float]]:
    catalog = load_catalog(catalog_path)
    client = redis.asyncio.Redis.from_url(url)
    engine = QuotaEngine(Settings(redis_url=url), catalog, client, Spool(spool_dir))
    key = parse_api_key(api_key)
    assert key is not None
    model = catalog.models[MODEL]
    try:
        await _cycles(engine, key, 200, {n: [] for n in ("admit", "settle", "admit+settle", "PING")})  # warm-up
        runs: dict[str, Samples] = {}
        runs["sequential"] = {n: [] for n in ("admit", "settle", "admit+settle", "PING")}
        await _cycles(engine, key, SEQUENTIAL_CYCLES, runs["sequential"])
        runs[f"{TASKS} tasks"] = {n: [] for n in ("admit", "settle", "admit+settle", "PING")}
        await asyncio.gather(*(_cycles(engine, key, CYCLES_PER_TASK, runs[f"{TASKS} tasks"])
                               for _ in range(TASKS)))

        async def admit() -> object:
            return await engine.admit(key, model, _rid(), True)

        async def ping() -> object:
            return await client.ping()

        rates = {"admits/s, pipelined (ScriptBatcher)": await _rate(TASKS, THROUGHPUT_SECONDS, admit)}
        batcher = engine.batcher
        engine.batcher = ScriptBatcher(client, max_batch=1)   # one EVALSHA per call, no pipelining
        try:
            rates["admits/s, one EVALSHA per call"] = await _rate(TASKS, THROUGHPUT_SECONDS, admit)
        finally:
            await engine.batcher.drain()
            engine.batcher = batcher
        rates["PINGs/s"] = await _rate(TASKS, THROUGHPUT_SECONDS, ping)
        return runs, rates
    finally:
        await engine.close()
        engine.spool.close()
        await client.aclose()


@pytest.mark.benchmark
def test_quota_round_trips(tmp_path: Path) -> None:
    catalog = bench_catalog(tmp_path)
    with private_redis() as rds:
        api_key = seed_account(rds.url, catalog)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runs, rates = runner.run(asyncio.wait_for(_run(rds.url, catalog, tmp_path / "spool", api_key), 180))

    rows: list[tuple[object, ...]] = []
    p99_ratio: dict[str, float] = {}
    for mode, samples in runs.items():
        ms = {name: sorted(v / 1e6 for v in values) for name, values in samples.items()}
        for name, values in ms.items():
            rows.append((mode, name, percentile(values, 50), percentile(values, 99), len(values)))
        p99_ratio[mode] = percentile(ms["admit"], 99) / percentile(ms["PING"], 99)
    print("\n\nQuotaEngine round trips vs PING, same redis.asyncio client, uvloop (2-core machine)")
    print(table(["mode", "operation", "p50 ms", "p99 ms", "samples"], rows))
    print()
    pipelined = rates["admits/s, pipelined (ScriptBatcher)"]
    unbatched = rates["admits/s, one EVALSHA per call"]
    print(table(["throughput, 50 tasks", "per second"], [(k, v) for k, v in rates.items()]))
    print()
    print(table(["ratio", "value", "target"], [
        *((f"admit p99 / PING p99, {mode}", f"{r:.2f}",
           f"<= {MAX_ADMIT_OVER_PING_P99}: {verdict(r <= MAX_ADMIT_OVER_PING_P99)}") for mode, r in p99_ratio.items()),
        ("admits/s pipelined / unpipelined", f"{pipelined / unbatched:.2f}", "> 1 (pipelining helps)"),
    ]))
    if STRICT:
        assert all(r <= MAX_ADMIT_OVER_PING_P99 for r in p99_ratio.values())
