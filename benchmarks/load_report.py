"""The markdown report of `make load` (benchmarks/load.py): locust's CSV, the clients' outcomes, ClickHouse totals."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.support import percentile

KINDS = ("2xx", "429 rate limit", "429 quota", "403 model", "5xx")


@dataclass(frozen=True)
class CpuSample:
    role: str
    processes: int
    percent: float          # of one core, over the locust run


@dataclass(frozen=True)
class Run:
    out: Path
    seconds: int
    users: int
    spawn_rate: float
    proxies: int
    accounts: list[dict[str, str]]
    totals: dict[str, tuple[int, int]]      # account -> (ClickHouse usage rows, calls)
    cpu: list[CpuSample]
    locust_status: int
    stack_status: int
    stop_s: float
    last_drain: str
    capped_quota: int
    problems: list[str]                     # the stack log's ERROR / CRITICAL / Traceback lines


def _table(headers: list[str], rows: list[list[object]]) -> list[str]:
    def cell(value: object) -> str:
        return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def _locust_rows(stats: list[dict[str, Any]]) -> list[list[object]]:
    return [["**all**" if row["name"] == "Aggregated" else row["name"], row["requests"], float(row["rps"]),
             round(row["p50"] or 0), round(row["p95"] or 0), round(row["p99"] or 0), round(row["max"] or 0),
             row["failures"]] for row in stats]


def code_version(root: Path) -> str:
    """The commit measured, and whether the work tree had changes (others' half-done edits skew a run)."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git work tree)"
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


def render(run: Run) -> tuple[str, bool]:
    """The report, and whether the run is good: clean stop, locust ran, every account's totals match."""
    data = json.loads((run.out / "outcomes.json").read_text())
    outcomes = {account: Counter(kinds) for account, kinds in data["outcomes"].items()}
    latencies: dict[str, list[float]] = data["latencies_ms"]
    lines = [f"# `make load`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"`make stack` with {run.proxies} proxy processes (SO_REUSEPORT on one port), one worker + API process "
             "(chDB), a private Redis and the fake upstream (50-250 ms per answer; streams: 16 chunks 5 ms apart), "
             f"on {os.cpu_count()} cores, Python {platform.python_version()}. Locust (FastHttpUser, in its own "
             f"process on the same machine): {run.users} users, spawn {run.spawn_rate:g}/s, {run.seconds} s; "
             f"mix in `benchmarks/locustfile.py`. Code: {code_version(Path(__file__).resolve().parent.parent)}.", "",
             "## Throughput and latency (locust, every answer; ms)", "",
             *_table(["request", "requests", "req/s", "p50", "p95", "p99", "max", "not 2xx"],
                     _locust_rows(data["locust"])),
             "", "## Latency of the admitted (2xx) answers (ms)", ""]
    rows: list[list[object]] = []
    for name, values in sorted(latencies.items()):
        ordered = sorted(values)
        rows.append([name, len(ordered), percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99)])
    lines += [*_table(["request", "2xx", "p50", "p95", "p99"], rows), "", "## Answers by kind (client side)", ""]
    rows = []
    total: Counter[str] = Counter()
    for account in run.accounts:
        kinds = outcomes.get(account["account"], Counter())
        total.update(kinds)
        other = sum(n for kind, n in kinds.items() if kind not in KINDS)
        rows.append([f"{account['account']} ({account['role']})", account["plan"], sum(kinds.values()),
                     *(kinds[k] for k in KINDS), other])
    rows.append(["**all**", "", sum(total.values()), *(total[k] for k in KINDS),
                 sum(n for kind, n in total.items() if kind not in KINDS)])
    lines += _table(["account", "plan", "requests", *KINDS, "other"], rows)
    others = sorted(kind for kind in total if kind not in KINDS)
    if others:
        lines += ["", f"Other kinds: {', '.join(f'{k} ({total[k]})' for k in others)}."]
    lines += ["", "## Billing check: ClickHouse after the stop's last drain", "",
              "Admitted requests counted by the clients (2xx answers; each is one call) against the account's "
              "usage totals read with `billing_worker.usage_queries.account_totals` once the stack stopped.", ""]
    rows, matches = [], True
    for account in run.accounts:
        admitted = outcomes.get(account["account"], Counter())["2xx"]
        usage_rows, calls = run.totals.get(account["account"], (0, 0))
        equal = calls == admitted
        matches = matches and equal
        rows.append([account["account"], admitted, calls, usage_rows, "yes" if equal else "**NO**"])
    lines += _table(["account", "2xx (clients)", "ClickHouse calls", "ClickHouse usage rows", "equal"], rows)
    capped = next((a["account"] for a in run.accounts if a["role"] == "capped"), None)
    if capped is not None:
        lines += ["", f"{capped} has a custom quota of {run.capped_quota} calls: "
                      f"{outcomes.get(capped, Counter())['2xx']} admitted, the rest refused with 429 quota."]
    lines += ["", "**Result: " + ("every account's ClickHouse calls equal its 2xx answers.**" if matches else
                                  "MISMATCH between ClickHouse and the answers the clients got.**"),
              "", "## CPU during the run (% of one core)", "",
              *_table(["process", "count", "CPU %"], [[c.role, c.processes, c.percent] for c in run.cpu]),
              "", "## Stop", "",
              f"Stack stopped with status {run.stack_status} in {run.stop_s:.1f} s (proxies settle what is in flight, "
              f"then the worker's last drain); locust exited with status {run.locust_status}.",
              *([f"`{run.last_drain.split(' INFO ', 1)[-1]}`"] if run.last_drain else
                ["**No last drain was logged.**"]),
              *(["", "Errors in the stack's log:", "", "```", *run.problems, "```"] if run.problems else []), "",
              "## Command", "", "```sh",
              f"make load LOAD_SECONDS={run.seconds} LOAD_USERS={run.users} LOAD_SPAWN_RATE={run.spawn_rate:g}"
              + (f"  # AIHUB_PROXIES={run.proxies}" if run.proxies != 2 else ""), "```", ""]
    ok = matches and run.stack_status == 0 and run.locust_status == 0 and bool(run.last_drain) and not run.problems
    return "\n".join(lines), ok
