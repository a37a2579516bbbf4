"""Process helpers for the benchmarks: private Redis, fake upstream, gateway processes, nginx and wrk.

Every process started here is stopped by the context manager that started it, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from fakes.openai_upstream import spawn_process, stop_process
from gateway.accounts import AccountStore
from gateway.catalog import load_catalog
from gateway.keys import shard_of, usage_stream
from gateway.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable
SECONDS = float(os.environ.get("AIHUB_BENCH_SECONDS", "10"))      # measured wrk run
WARMUP_SECONDS = float(os.environ.get("AIHUB_BENCH_WARMUP_SECONDS", "2"))
ROUNDS = int(os.environ.get("AIHUB_BENCH_ROUNDS", "3"))            # interleaved rounds
STRICT = os.environ.get("AIHUB_BENCH_STRICT") == "1"               # fail the test when a target is missed
UPSTREAM_KEY = "sk-upstream-bench"
ACCOUNT = "benchent"
SHARDS = 16
MODEL = "gpt-4o-mini"
CHAT_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words"}]})


# -- catalog and account -----------------------------------------------------------------------------
def bench_catalog(directory: Path, rate_per_minute: int = 600_000_000, burst: int = 1_000_000_000) -> Path:
    """config/catalog.toml with an enterprise rate limit that load never reaches (6000/min would refuse)."""
    text = (ROOT / "config" / "catalog.toml").read_text()
    head, marker, tail = text.partition("[plans.enterprise]")
    section, nxt, rest = tail.partition("\n[")
    section, n_rate = re.subn(r"(?m)^rate_per_minute\s*=.*$", f"rate_per_minute = {rate_per_minute}", section)
    section, n_burst = re.subn(r"(?m)^burst\s*=.*$", f"burst = {burst}", section)
    if not marker or n_rate != 1 or n_burst != 1:
        raise RuntimeError("config/catalog.toml changed shape: cannot raise the enterprise rate limit")
    path = directory / "catalog.toml"
    path.write_text(head + marker + section + nxt + rest)
    plan = load_catalog(path).plans["enterprise"]
    assert (plan.rate_per_minute, plan.burst, plan.unlimited_calls) == (rate_per_minute, burst, True)
    return path


def seed_account(redis_url: str, catalog_path: Path) -> str:
    """An enterprise account (unlimited calls) with one key; returns the API key."""
    client = redis.Redis.from_url(redis_url)
    try:
        store = AccountStore(client, load_catalog(catalog_path), SHARDS)
        if ACCOUNT not in store.list_accounts():
            store.create_account("Benchmark", "enterprise", account_id=ACCOUNT)
        return store.issue_key(ACCOUNT, "bench").api_key
    finally:
        client.close()


def usage_entries(redis_url: str) -> int:
    """Length of the bench account's usage stream (one entry per settled request)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(usage_stream(shard_of(ACCOUNT, SHARDS))))
    finally:
        client.close()


# -- processes ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class Service:
    url: str
    pid: int


@contextlib.contextmanager
def fake_upstream() -> Iterator[Service]:
    proc, url = spawn_process(free_port(), api_key=UPSTREAM_KEY)
    try:
        yield Service(url, proc.pid)
    finally:
        stop_process(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextlib.contextmanager
def gateway(redis_url: str, upstream_url: str, catalog_path: Path, workdir: Path, *, quota_checks: bool = True,
            profile_to: Path | None = None) -> Iterator[Service]:
    """One `python -m gateway serve` process; yields its URL and pid. `profile_to` runs it under a profiler:
    benchmarks.sampler for a .json path, cProfile otherwise (written when the process stops, on SIGINT)."""
    port = free_port()
    env = dict(os.environ) | {
        "REDIS_URL": redis_url, "AIHUB_HOST": "127.0.0.1", "AIHUB_PORT": str(port),
        "AIHUB_UPSTREAM_DEFAULT_URL": upstream_url, "AIHUB_UPSTREAM_DEFAULT_KEY": UPSTREAM_KEY,
        "AIHUB_QUOTA_CHECKS": "1" if quota_checks else "0", "AIHUB_CATALOG": str(catalog_path),
        "AIHUB_SPOOL_DIR": str(workdir / f"spool-{port}"), "PYTHONPATH": str(ROOT)}
    env.pop("AIHUB_ENV_FILE", None)
    profiler = [] if profile_to is None else ["-m", "benchmarks.sampler", str(profile_to)] \
        if profile_to.suffix == ".json" else ["-m", "cProfile", "-o", str(profile_to)]
    log = open(workdir / f"gateway-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([PYTHON, *profiler, "-m", "gateway", "serve"], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc)
        yield Service(url, proc.pid)
    finally:
        # SIGTERM is the service stop; a profiler needs SIGINT (KeyboardInterrupt) to write its stats.
        stop(proc, signal.SIGINT if profile_to else signal.SIGTERM)
        log.close()


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;   # parity with the gateway (uvicorn access_log=False)
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream fake {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(upstream_url: str, workdir: Path) -> Iterator[Service]:
    """nginx proxy_pass to the upstream (no root needed: every path is under `workdir`)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    directory = workdir / "nginx"
    directory.mkdir()
    directory.chmod(0o755)   # when run as root the worker runs as nobody
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=directory, port=port, upstream=upstream_url.removeprefix("http://")))
    proc = subprocess.Popen([binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_fake/stats", proc)
        yield Service(url, proc.pid)
    finally:
        stop(proc, signal.SIGTERM)


def nginx_available() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


# -- wrk -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def wrk_script(directory: Path, name: str, authorization: str, body: bytes = CHAT_BODY) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(f'wrk.method = "POST"\nwrk.body = [==[{body.decode()}]==]\n'
                    f'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {authorization}"\n')
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    if match is None:
        raise ValueError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(rps=float(rps.group(1)), p50_ms=_latency_ms(output, "50"), p99_ms=_latency_ms(output, "99"),
                     requests=int(total.group(1)), non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
                     socket_errors=sum(int(g) for g in errors.groups()) if errors else 0)


def run_wrk(targets: Sequence[tuple[str, Path]], *, seconds: float = SECONDS, threads: int = 2,
            connections: int = 50) -> list[WrkResult]:
    """One wrk per (url, script), all at once; each POSTs to url + /v1/chat/completions."""
    procs = [subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
                               "-s", str(script), "--latency", f"{url}/v1/chat/completions"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for url, script in targets]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return [parse_wrk(out) for out in outputs]


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process, its threads and (by default) its live children (nginx workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return own
    return own + sum(cpu_seconds(int(child)) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (all cores) outside idle and iowait."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(threshold: float = 15.0, timeout: float = 60.0, window: float = 2.0) -> float:
    """Waits (at most `timeout` s) until the machine is near idle: less than `threshold` % of one core busy
    over `window` s; returns the last busy %. Other jobs on a 2-core machine skew every figure."""
    deadline = time.monotonic() + timeout
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = 100 * (machine_busy_seconds() - before) / window
        if busy < threshold or time.monotonic() > deadline:
            return busy


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(targets: Sequence[tuple[str, Path]], watch: Sequence[int] = (), connections: int = 50,
            threads: int = 2) -> tuple[list[WrkResult], list[float]]:
    """A short warm-up (keep-alive pools, caches), then the measured run. Also returns the CPU use (% of one
    core) during the measured run of each `watch` pid, then of wrk, then of everything else on the machine
    (other jobs: a noise indicator)."""
    run_wrk(targets, seconds=WARMUP_SECONDS, threads=threads, connections=connections)
    before = [cpu_seconds(pid) for pid in watch]
    wrk_before, machine_before, started = children_cpu_seconds(), machine_busy_seconds(), time.monotonic()
    results = run_wrk(targets, threads=threads, connections=connections)
    elapsed = time.monotonic() - started
    used = [cpu_seconds(pid) - b for pid, b in zip(watch, before, strict=True)]
    used.append(children_cpu_seconds() - wrk_before)
    used.append(machine_busy_seconds() - machine_before - sum(used))
    return results, [100 * u / elapsed for u in used]


# -- reporting -------------------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:,.2f}" if isinstance(c, float) else str(c) for c in row]
                                            for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
