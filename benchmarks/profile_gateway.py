"""Profile one gateway process while wrk loads it (-t1 -c50), with quota checks on and off.

    .venv/bin/python -m benchmarks.profile_gateway [--checks on|off|both] [--seconds 10] [--top 25]
                                                   [--profiler py-spy|sampler|cprofile] [--upstream static|fake]

`--upstream static` (the default) is nginx answering with a fixed chat completion (benchmarks.static_upstream), so
the upstream costs next to nothing; `fake` is the fake OpenAI upstream. py-spy (the default profiler) samples
the process from outside without slowing it (`--nonblocking`) and sees time in C and system calls, charged to
the Python line that made them; the sampler (benchmarks/sampler.py, SIGPROF) needs no extra package; cProfile
gives call counts but inflates functions that make many small calls.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import pstats
import shutil
import subprocess
import tempfile
from pathlib import Path

import orjson

from benchmarks.gateway_procs import gateway_process, run_wrk
from benchmarks.static_upstream import static_upstream
from benchmarks.support import (
    PYTHON,
    bench_catalog,
    cpu_seconds,
    fake_upstream,
    gateway,
    private_redis,
    seed_account,
    wrk_script,
)


def _print_top(own: dict[str, int], inclusive: dict[str, int], total: int, top: int, per_request_us: float) -> None:
    for kind, counts in (("self", own), ("inclusive", inclusive)):
        print(f"\n  top {top} by {kind} CPU (% of the samples, us per request; wrappers above 90% left out)")
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        shown = [(where, n) for where, n in ranked if n < 0.9 * total][:top]
        for where, n in shown:
            print(f"  {100 * n / total:5.1f}%  {n / total * per_request_us:6.0f} us  {where}")


def report_py_spy(raw: Path, top: int, per_request_us: float) -> None:
    """py-spy's raw (collapsed) stacks: `frame;frame;... count` per line."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    total = sum(own.values())
    print(f"{total} samples; {per_request_us:.0f} us of CPU per request")
    _print_top(own, inclusive, total, top, per_request_us)


def report(stats: Path, top: int, requests: int) -> None:
    if stats.suffix != ".json":
        for key in ("tottime", "cumulative"):
            pstats.Stats(str(stats)).strip_dirs().sort_stats(key).print_stats(top)
        return
    data = orjson.loads(stats.read_bytes())
    total, per_request_us = data["samples"], data["cpu_s"] / requests * 1e6
    print(f"{total} samples, {data['cpu_s']:.1f} s of CPU = {per_request_us:.0f} us of CPU per request")
    _print_top(data["self"], data["inclusive"], total, top, per_request_us)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -r requirements.lock (or pip install py-spy)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", choices=("on", "off", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--profiler", choices=("py-spy", "sampler", "cprofile"), default="py-spy")
    parser.add_argument("--upstream", choices=("static", "fake"), default="static")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aihub-profile-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        catalog = bench_catalog(work)
        rds = stack.enter_context(private_redis())
        upstream = stack.enter_context(static_upstream(work) if args.upstream == "static" else fake_upstream())
        script = wrk_script(work, "gateway", seed_account(rds.url, catalog))
        for checks in ("on", "off") if args.checks == "both" else (args.checks,):
            if args.profiler == "py-spy":
                raw = work / f"gateway-{checks}.txt"
                with gateway_process(rds.url, upstream.url, catalog, work, quota_checks=checks == "on") as gw:
                    run_wrk(gw.url, script, connections=50, seconds=2)        # warm-up
                    before = cpu_seconds(gw.pid)
                    recorder = subprocess.Popen([py_spy(), "record", "--pid", str(gw.pid), "--nonblocking",
                                                 "--rate", "200", "--format", "raw", "--output", str(raw),
                                                 "--duration", str(int(args.seconds) + 1)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    result = run_wrk(gw.url, script, connections=50, seconds=args.seconds)
                    used = cpu_seconds(gw.pid) - before
                    recorder.wait(args.seconds + 30)
                print(f"\n=== checks {checks}, under py-spy: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                      f"{result.requests} requests")
                report_py_spy(raw, args.top, used / result.requests * 1e6)
                continue
            stats = work / f"gateway-{checks}.{'json' if args.profiler == 'sampler' else 'prof'}"
            with gateway(rds.url, upstream.url, catalog, work, quota_checks=checks == "on", profile_to=stats) as gw:
                result = run_wrk(gw.url, script, connections=50, seconds=args.seconds)
            print(f"\n=== checks {checks}, under {args.profiler}: {result.rps:.0f} req/s, "
                  f"p50 {result.p50_ms:.2f} ms, {result.requests} requests")
            report(stats, args.top, result.requests)


if __name__ == "__main__":
    main()
