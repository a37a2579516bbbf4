"""Profile one gateway process under cProfile while wrk loads it: top functions by own and cumulative time.

    .venv/bin/python -m benchmarks.profile_gateway [--checks on|off] [--seconds 10] [--top 25]
"""

from __future__ import annotations

import argparse
import pstats
import tempfile
from pathlib import Path

from benchmarks.support import (
    bench_catalog,
    fake_upstream,
    gateway,
    private_redis,
    run_wrk,
    seed_account,
    wrk_script,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checks", choices=("on", "off"), default="on")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aihub-profile-") as tmp:
        work = Path(tmp)
        catalog = bench_catalog(work)
        stats = work / "gateway.prof"
        with private_redis() as rds, fake_upstream() as upstream:
            script = wrk_script(work, "gateway", seed_account(rds.url, catalog))
            with gateway(rds.url, upstream.url, catalog, work, quota_checks=args.checks == "on",
                         profile_to=stats) as gw:
                result = run_wrk([(gw.url, script)], seconds=args.seconds)[0]
        print(f"under cProfile: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, {result.requests} requests")
        for key in ("tottime", "cumulative"):
            pstats.Stats(str(stats)).strip_dirs().sort_stats(key).print_stats(args.top)


if __name__ == "__main__":
    main()
