"""Profile one gateway process while wrk loads it (-c50), with quota checks on and off.

    .venv/bin/python -m benchmarks.profile_gateway [--checks on|off|both] [--seconds 10] [--top 25]
                                                   [--profiler sampler|cprofile]

The sampler (benchmarks/sampler.py, SIGPROF every ms of CPU) gives realistic weights; cProfile gives call
counts but inflates functions that make many small calls (redis-py's encoder, for one).
"""

from __future__ import annotations

import argparse
import pstats
import tempfile
from pathlib import Path

import orjson

from benchmarks.support import (
    bench_catalog,
    fake_upstream,
    gateway,
    private_redis,
    run_wrk,
    seed_account,
    wrk_script,
)


def report(stats: Path, top: int, requests: int) -> None:
    if stats.suffix != ".json":
        for key in ("tottime", "cumulative"):
            pstats.Stats(str(stats)).strip_dirs().sort_stats(key).print_stats(top)
        return
    data = orjson.loads(stats.read_bytes())
    total, per_request_us = data["samples"], data["cpu_s"] / requests * 1e6
    print(f"{total} samples, {data['cpu_s']:.1f} s of CPU = {per_request_us:.0f} us of CPU per request")
    for kind in ("self", "inclusive"):
        print(f"\n  top {top} by {kind} CPU (% of the process, us per request; wrappers above 90% left out)")
        shown = [(where, n) for where, n in data[kind].items() if n < 0.9 * total][:top]
        for where, n in shown:
            print(f"  {100 * n / total:5.1f}%  {n / total * per_request_us:6.0f} us  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checks", choices=("on", "off", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--profiler", choices=("sampler", "cprofile"), default="sampler")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aihub-profile-") as tmp:
        work = Path(tmp)
        catalog = bench_catalog(work)
        with private_redis() as rds, fake_upstream() as upstream:
            script = wrk_script(work, "gateway", seed_account(rds.url, catalog))
            for checks in ("on", "off") if args.checks == "both" else (args.checks,):
                stats = work / f"gateway-{checks}.{'json' if args.profiler == 'sampler' else 'prof'}"
                with gateway(rds.url, upstream.url, catalog, work, quota_checks=checks == "on",
                             profile_to=stats) as gw:
                    result = run_wrk([(gw.url, script)], seconds=args.seconds)[0]
                print(f"\n=== checks {checks}, under {args.profiler}: {result.rps:.0f} req/s, "
                      f"p50 {result.p50_ms:.2f} ms, {result.requests} requests")
                report(stats, args.top, result.requests)


if __name__ == "__main__":
    main()
