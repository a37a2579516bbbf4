"""`make load`: locust against a `make stack` this starts and stops itself, and a report.

    .venv/bin/python -m benchmarks.load [--seconds 60] [--users 20] [--spawn-rate 5] [--proxies 2] [--out DIR]

1. Starts `python -m gateway.multi` (AIHUB_PROXIES proxies, worker + API, private Redis, fake upstream) on free
   ports with its state in a new temporary directory (so a running `make up` or `make stack` is not touched
   and ClickHouse holds this run's usage only), and waits for its banner.
2. Creates the load-test accounts through the system of record's AccountService (what `aihub create-account`,
   `aihub set-quota` call): Free, Pro, Enterprise, and a Pro account capped by a small custom quota.
3. Runs benchmarks/locustfile.py headless in a subprocess (locust's gevent patching stays there) for the
   bounded time, with CSVs in the output directory.
4. Stops the stack (SIGTERM: the proxies settle what is in flight, the worker drains a last time), then reads
   each account's usage totals from ClickHouse with billing_worker.usage_queries and compares them with the
   answers the clients got: calls in ClickHouse = 2xx answers (every request of the mix is one call).
5. Writes `report.md` beside locust's CSVs (default `benchmarks/results/load-<UTC time>/`).

Exit status: 0 when the run finished, the stack stopped cleanly and every account's totals match; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.load_report import CpuSample, Run, render
from benchmarks.support import children_cpu_seconds
from benchmarks.support import cpu_seconds as process_cpu_seconds
from gateway.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"
CAPPED_QUOTA = 40
# (account id, plan, role in the locustfile, custom quota)
ACCOUNTS = (("loadfree", "free", "free", None), ("loadpro", "pro", "pro", None),
            ("loadent", "enterprise", "enterprise", None), ("loadcap", "pro", "capped", CAPPED_QUOTA))
PID_LINE = re.compile(r"pids? ([\d, ]+)")


@dataclass
class StackProcess:
    """`python -m gateway.multi` in its own session, its log in `log`."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    pids: dict[str, list[int]] = field(default_factory=dict)

    def start(self, timeout: float = 180.0) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway.multi"], env=self.env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while "upstream " not in (text := self.log.read_text(errors="replace")):
            if self.proc.poll() is not None:
                raise RuntimeError(f"make stack exited with {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"make stack did not print its banner within {timeout}s:\n{text[-3000:]}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.env['AIHUB_PORT']}"
        for line in text.splitlines():
            role = line.strip().split("  ")[0]
            match = PID_LINE.search(line)
            if role in ("proxies", "worker + API") and match:
                self.pids[role] = [int(p) for p in match.group(1).replace(",", " ").split()]

    def stop(self, timeout: float = 180.0) -> int:
        """SIGTERM, as a service manager stops it; the exit status (killed after `timeout`: -9)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return int(self.proc.returncode)

    def stack_pids(self) -> dict[str, list[int]]:
        """Every process of the stack by role, from the launcher's children (Redis and upstream included)."""
        assert self.proc is not None
        found: dict[str, list[int]] = {"launcher": [self.proc.pid]}
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in map(int, children):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            role = ("proxies" if "multi_roles proxy" in cmd else "worker + API" if "api-worker" in cmd
                    else "Redis" if "redis-server" in cmd else "fake upstream" if "openai_upstream" in cmd
                    else "other")
            found.setdefault(role, []).append(pid)
        return found


def stack_env(workdir: Path, proxies: int) -> dict[str, str]:
    """A private stack: its own Redis, fake upstream, database, chDB and ports, whatever the caller's env says."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AIHUB_UPSTREAM_DEFAULT_URL", "AIHUB_UPSTREAM_DEFAULT_KEY", "AIHUB_ENV_FILE",
                        "DATABASE_URL", "CLICKHOUSE_URL", "AIHUB_BROKER_URL", "REDIS_CLUSTER")}
    return env | {
        "AIHUB_VAR_DIR": str(workdir / "var"), "CLICKHOUSE_URL": f"chdb://{workdir / 'chdb'}",
        "AIHUB_SPOOL_DIR": str(workdir / "spool"), "AIHUB_PORT": str(free_port()), "AIHUB_API_PORT": str(free_port()),
        "AIHUB_PROXIES": str(proxies), "AIHUB_REQUIRE_PAYMENT_METHOD": "0",
        "AIHUB_FORWARD_HEADERS": "x-fake-latency-ms,x-fake-chunk-delay-ms",   # the mix's model-like latency
        "PYTHONPATH": str(ROOT)}


def create_accounts(env: dict[str, str]) -> list[dict[str, str]]:
    """The load-test accounts and one key each, through the running stack's Redis (its runtime file)."""
    from billing.store import open_accounts
    from gateway.runtime import stack_environ
    environ, _ = stack_environ(env)
    store = open_accounts(environ)
    try:
        made = []
        for account_id, plan, role, quota in ACCOUNTS:
            store.accounts.create_account(f"Load {role}", plan, account_id=account_id, actor="make-load")
            if quota is not None:
                store.accounts.set_custom_quota(account_id, quota, actor="make-load")
            issued, projected = store.accounts.issue_key(account_id, "load", actor="make-load")
            if not projected:
                raise RuntimeError(f"{account_id} was not projected into the stack's Redis")
            made.append({"account": account_id, "plan": plan, "role": role, "api_key": issued.api_key})
        return made
    finally:
        store.close()


def run_locust(url: str, accounts_file: Path, out: Path, seconds: int, users: int, spawn_rate: float) -> int:
    env = dict(os.environ) | {"AIHUB_LOAD_ACCOUNTS": str(accounts_file),
                              "AIHUB_LOAD_OUTCOMES": str(out / "outcomes.json"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
           "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s",
           "--stop-timeout", "30",            # users finish their request: every answer is counted
           "--csv", str(out / "locust"), "--exit-code-on-error", "0", "--only-summary",
           "--loglevel", "WARNING"]
    with open(out / "locust.log", "wb") as log:
        return subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=seconds + 120).returncode


def clickhouse_totals(clickhouse_url: str, accounts: Sequence[str],
                      periods: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(usage rows, calls) per account over `periods`, read with the worker's own queries (stack stopped)."""
    from billing_worker.clickhouse import ClickHouse
    from billing_worker.usage_queries import account_totals
    totals = dict.fromkeys(accounts, (0, 0))
    with ClickHouse(clickhouse_url) as ch:
        for period in periods:
            for account in accounts:
                for line in account_totals(ch, period, account):
                    rows, calls = totals[account]
                    totals[account] = (rows + line.requests, calls + line.calls)
    return totals


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (those gone count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):     # gone
            total += process_cpu_seconds(pid, children=False)
    return total


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[tuple[Path, list[bool]]]:
    """A temporary directory for the stack's state and log, removed after a good run (set `good[0]`)."""
    path = Path(tempfile.mkdtemp(prefix="aihub-load-"))
    good = [False]
    try:
        yield path, good
    finally:
        if good[0] and not keep:
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"load: the stack's state and log are kept in {path}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from gateway.quota.periods import period_of
    out = Path(args.out) if args.out else RESULTS / f"load-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    with workdir(args.keep) as (work, good):
        env = stack_env(work, args.proxies)
        stack = StackProcess(env, work / "stack.log")
        started_s = time.time()
        try:
            stack.start()
            print(f"load: stack up at {stack.url} ({args.proxies} proxies); creating the load-test accounts",
                  file=sys.stderr)
            accounts = create_accounts(env)
            (work / "accounts.json").write_text(json.dumps(accounts))
            pids = stack.stack_pids()
            missing = {"proxies", "worker + API"} - pids.keys()
            if stack.proc is None or stack.proc.poll() is not None or missing:
                raise RuntimeError(f"the stack is not whole before the run (missing: {sorted(missing)}):\n"
                                   + "\n".join(stack.log.read_text(errors="replace").splitlines()[-40:]))
            before = {role: cpu_seconds(p) for role, p in pids.items()}
            print(f"load: locust, {args.users} users (spawn {args.spawn_rate}/s), {args.seconds} s", file=sys.stderr)
            locust_before, t0 = children_cpu_seconds(), time.monotonic()
            locust_status = run_locust(stack.url, work / "accounts.json", out, args.seconds, args.users,
                                       args.spawn_rate)
            elapsed = time.monotonic() - t0
            cpu = [CpuSample(role, len(p), 100 * (cpu_seconds(p) - before[role]) / elapsed)
                   for role, p in pids.items()]
            cpu.append(CpuSample("locust", 1, 100 * (children_cpu_seconds() - locust_before) / elapsed))
        finally:
            stop_started = time.monotonic()
            stack_status = stack.stop()
            stop_s = time.monotonic() - stop_started
        print(f"load: stack stopped ({stop_s:.1f} s, status {stack_status}); reading ClickHouse", file=sys.stderr)
        periods = sorted({period_of(started_s).name, period_of(time.time()).name})
        totals = clickhouse_totals(env["CLICKHOUSE_URL"], [a["account"] for a in accounts], periods)
        log = stack.log.read_text(errors="replace").splitlines()
        log_tail = [line for line in log if "last drain before stopping" in line]
        problems = [line for line in log if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
        report = Run(out=out, seconds=args.seconds, users=args.users, spawn_rate=args.spawn_rate,
                     proxies=args.proxies, accounts=accounts, totals=totals, cpu=cpu, locust_status=locust_status,
                     stack_status=stack_status, stop_s=stop_s, last_drain=log_tail[-1] if log_tail else "",
                     problems=problems[:20],
                     capped_quota=CAPPED_QUOTA)
        text, ok = render(report)
        (out / "report.md").write_text(text)
        print(text)
        print(f"load: report in {out / 'report.md'}", file=sys.stderr)
        good[0] = ok
        return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="locust run time (make load: LOAD_SECONDS)")
    parser.add_argument("--users", type=int, default=20, help="locust users (make load: LOAD_USERS)")
    parser.add_argument("--spawn-rate", type=float, default=5, help="users started per second (LOAD_SPAWN_RATE)")
    parser.add_argument("--proxies", type=int, default=int(os.environ.get("AIHUB_PROXIES") or 2),
                        help="proxy processes (default: AIHUB_PROXIES, else 2)")
    parser.add_argument("--out", help="output directory (default: benchmarks/results/load-<UTC time>)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temporary state directory")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
