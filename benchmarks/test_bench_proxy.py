"""Proxy overhead: wrk POSTs /v1/chat/completions (non-streaming, 50 connections) to the fake upstream
directly, through the gateway with quota checks on and off, through nginx, and through 2 gateways.

The machine has 2 cores shared by wrk, the fake upstream, Redis and the gateway(s): absolute figures are
low; the ratios, all measured in this one run, are the point. The CPU columns (% of one core during the
measured run) show which process is the bottleneck.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.support import (
    SECONDS,
    STRICT,
    UPSTREAM_KEY,
    WrkResult,
    bench_catalog,
    fake_upstream,
    gateway,
    measure,
    nginx,
    nginx_available,
    private_redis,
    seed_account,
    table,
    usage_entries,
    verdict,
    wrk_script,
)

MIN_ON_OFF_THROUGHPUT = 0.85
MAX_ADDED_P50_MS = 1.0


def _billed_since(redis_url: str, before: int, expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (billed := usage_entries(redis_url) - before) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return billed


def _combined(results: list[WrkResult]) -> WrkResult:
    """Several wrk runs at once: throughput adds up; latencies are those of the worse instance."""
    return WrkResult(rps=sum(r.rps for r in results), p50_ms=max(r.p50_ms for r in results),
                     p99_ms=max(r.p99_ms for r in results), requests=sum(r.requests for r in results),
                     non_2xx=sum(r.non_2xx for r in results),
                     socket_errors=sum(r.socket_errors for r in results))


@pytest.mark.benchmark
def test_proxy_overhead(tmp_path: Path) -> None:
    catalog = bench_catalog(tmp_path)
    results: dict[str, WrkResult] = {}
    cpu: dict[str, tuple[float, float, float]] = {}   # proxy, upstream, redis (% of one core)
    with private_redis() as rds, fake_upstream() as upstream:
        assert rds.proc is not None
        api_key = seed_account(rds.url, catalog)
        direct = wrk_script(tmp_path, "direct", UPSTREAM_KEY)
        through = wrk_script(tmp_path, "gateway", api_key)

        def run(name: str, targets: list[tuple[str, Path]], proxies: list[int], connections: int = 50,
                threads: int = 2) -> WrkResult:
            assert rds.proc is not None
            found, use = measure(targets, [*proxies, upstream.pid, rds.proc.pid], connections, threads)
            results[name] = _combined(found)
            cpu[name] = (sum(use[:-2]), use[-2], use[-1])
            return results[name]

        run("direct (fake upstream)", [(upstream.url, direct)], [])

        before = usage_entries(rds.url)
        with gateway(rds.url, upstream.url, catalog, tmp_path, quota_checks=True) as gw:
            on = run("gateway, checks on", [(gw.url, through)], [gw.pid])
        assert _billed_since(rds.url, before, on.requests) >= on.requests, "some requests were not settled"

        before = usage_entries(rds.url)
        with gateway(rds.url, upstream.url, catalog, tmp_path, quota_checks=False) as gw:
            off = run("gateway, checks off", [(gw.url, through)], [gw.pid])
        assert usage_entries(rds.url) == before, "checks off must not settle anything"

        if nginx_available():
            with nginx(upstream.url, tmp_path) as ngx:
                run("nginx proxy_pass", [(ngx.url, direct)], [ngx.pid])

        # Two gateway processes on two ports, one wrk each (-t1 -c25, so still 50 connections in all).
        with gateway(rds.url, upstream.url, catalog, tmp_path) as gw_a, \
                gateway(rds.url, upstream.url, catalog, tmp_path) as gw_b:
            run("2 gateways, checks on", [(gw_a.url, through), (gw_b.url, through)], [gw_a.pid, gw_b.pid],
                connections=25, threads=1)

    for name, result in results.items():
        assert result.requests > 0 and result.non_2xx == 0 and result.socket_errors == 0, (name, result)

    base = results["direct (fake upstream)"]
    on_off = on.rps / off.rps
    added_p50 = on.p50_ms - off.p50_ms
    ratios: list[tuple[str, str, str]] = [
        ("gateway(on) / direct, req/s", f"{on.rps / base.rps:.2f}", ""),
        ("gateway(on) / gateway(off), req/s", f"{on_off:.2f}",
         f">= {MIN_ON_OFF_THROUGHPUT}: {verdict(on_off >= MIN_ON_OFF_THROUGHPUT)}"),
        ("p50 added by checks (on - off), ms", f"{added_p50:.2f}",
         f"< {MAX_ADDED_P50_MS}: {verdict(added_p50 < MAX_ADDED_P50_MS)}"),
        ("p50 added by gateway(on) over direct, ms", f"{on.p50_ms - base.p50_ms:.2f}", ""),
        ("2 gateways / 1 gateway (on), req/s", f"{results['2 gateways, checks on'].rps / on.rps:.2f}", ""),
    ]
    if "nginx proxy_pass" in results:
        ratios.insert(1, ("gateway(on) / nginx, req/s", f"{on.rps / results['nginx proxy_pass'].rps:.2f}", ""))
    print(f"\n\nPOST /v1/chat/completions, non-streaming, wrk -c50 -d{SECONDS:g}s (2-core machine)")
    print(table(["target", "req/s", "p50 ms", "p99 ms", "requests", "proxy CPU%", "upstream CPU%", "redis CPU%"],
                [(n, r.rps, r.p50_ms, r.p99_ms, r.requests, *cpu[n]) for n, r in results.items()]))
    print()
    print(table(["ratio", "value", "target"], ratios))
    if not nginx_available():
        print("nginx is not installed: the nginx baseline was skipped")
    if STRICT:
        assert on_off >= MIN_ON_OFF_THROUGHPUT
        assert added_p50 < MAX_ADDED_P50_MS
