"""Gateway processes and load for the hot-path benchmarks: `aihub serve [--workers N]` from this tree or from
another copy of the code (`root`: the code before a change, measured in the same run), wrk pinned to CPUs, and a
one-connection client that times each byte of a streamed answer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.support import (
    PYTHON,
    ROOT,
    SECONDS,
    WARMUP_SECONDS,
    Service,
    WrkResult,
    children_cpu_seconds,
    cpu_seconds,
    machine_busy_seconds,
    parse_wrk,
    stop,
    wait_http,
)
from gateway.redis_server import free_port


@dataclass(frozen=True)
class Gateway(Service):
    pids: tuple[int, ...] = ()     # the serving processes (the supervisor's children with --workers N)


@contextlib.contextmanager
def gateway_process(redis_url: str, upstream_url: str, catalog_path: Path, workdir: Path, *, quota_checks: bool = True,
                    workers: int = 1, root: Path = ROOT, env: Mapping[str, str] | None = None,
                    profile: Sequence[str] = (), server: str = "uvicorn") -> Iterator[Gateway]:
    """`python -m gateway serve [--workers N]` run from `root` (the code measured); `profile` prefixes the
    command (e.g. py-spy record ... --); `server="granian"` serves the same app with granian instead, `"floor"` serves
    benchmarks/floor_app.py (the same server and upstream client with no gateway logic), `"server-alone"` the same
    without the upstream call (uvicorn only)."""
    port = free_port()
    environ = dict(os.environ) | {
        "REDIS_URL": redis_url, "AIHUB_HOST": "127.0.0.1", "AIHUB_PORT": str(port),
        "AIHUB_UPSTREAM_DEFAULT_URL": upstream_url, "AIHUB_UPSTREAM_DEFAULT_KEY": "sk-upstream-bench",
        "AIHUB_QUOTA_CHECKS": "1" if quota_checks else "0", "AIHUB_CATALOG": str(catalog_path),
        "AIHUB_SPOOL_DIR": str(workdir / f"spool-{port}"), "AIHUB_VAR_DIR": str(workdir / f"var-{port}"),
        "AIHUB_SHUTDOWN_GRACE_S": "5",
        # the measured tree's `gateway` first; this tree for what an older copy lacks (billing, ...)
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(root), str(ROOT)])),
    } | dict(env or {})
    environ.pop("AIHUB_ENV_FILE", None)
    environ.pop("DATABASE_URL", None)
    command = [*profile, PYTHON, "-m", "gateway", "serve", *(["--workers", str(workers)] if workers > 1 else [])]
    if server in ("floor", "server-alone"):   # no gateway: the same server and client only (benchmarks/floor_app.py)
        command = [PYTHON, "-m", "benchmarks.floor_app"]
        environ["AIHUB_FLOOR_UPSTREAM"] = "0" if server == "server-alone" else "1"   # server-alone: no upstream call
    if server == "granian":      # the same app under granian's Rust HTTP layer (ASGI), one process
        command = [PYTHON, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop", "--host",
                   "127.0.0.1", "--port", str(port), "--runtime-threads", "1", "--backlog", "4096",
                   "--log-level", "warning", "--no-access-log", "gateway.app:create_app"]
    log = open(workdir / f"gateway-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, env=environ, cwd=root, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, timeout=60)
        yield Gateway(url, proc.pid, serving_pids(proc.pid, workers))
    finally:
        stop(proc, signal.SIGINT if profile else signal.SIGTERM, timeout=30)
        log.close()


def granian_available() -> bool:
    return importlib.util.find_spec("granian") is not None


def serving_pids(pid: int, workers: int, timeout: float = 30.0) -> tuple[int, ...]:
    """The process itself, or its `workers` children once all of them serve."""
    if workers <= 1:
        return (pid,)
    deadline = time.monotonic() + timeout
    while True:
        children = tuple(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        if len(children) >= workers:
            return children
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers of {pid} did not start")
        time.sleep(0.05)


# -- wrk ---------------------------------------------------------------------------------------------------
def run_wrk(url: str, script: Path, *, connections: int, threads: int = 1, seconds: float = SECONDS,
            cpus: str | None = None) -> WrkResult:
    """One wrk POSTing the script's body to url/v1/chat/completions; `cpus`: taskset's CPU list for wrk."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "-s", str(script),
               "--latency", f"{url}/v1/chat/completions"]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return parse_wrk(out.stdout)


@dataclass(frozen=True)
class Load:
    result: WrkResult
    cpu: dict[str, float]     # % of one core during the measured run, by role; "wrk", "other jobs" last


def measure(url: str, script: Path, watch: Mapping[str, Sequence[int]], *, connections: int, threads: int = 1,
            cpus: str | None = None) -> Load:
    """A warm-up, then the measured wrk run with the CPU used by each watched role's pids, wrk and the rest of
    the machine (other people's jobs: a noise indicator)."""
    run_wrk(url, script, connections=connections, threads=threads, seconds=WARMUP_SECONDS, cpus=cpus)
    before = {role: sum(cpu_seconds(p) for p in pids) for role, pids in watch.items()}
    wrk_before, machine_before, started = children_cpu_seconds(), machine_busy_seconds(), time.monotonic()
    result = run_wrk(url, script, connections=connections, threads=threads, cpus=cpus)
    elapsed = time.monotonic() - started
    used = {role: sum(cpu_seconds(p) for p in pids) - before[role] for role, pids in watch.items()}
    used["wrk"] = children_cpu_seconds() - wrk_before
    used["other jobs"] = machine_busy_seconds() - machine_before - sum(used.values())
    return Load(result, {role: 100 * u / elapsed for role, u in used.items()})


# -- one streamed answer, byte by byte ---------------------------------------------------------------------
@dataclass(frozen=True)
class StreamTiming:
    first_byte_ms: float          # request written -> first body byte
    last_byte_ms: float           # request written -> the end of the body
    events: int                   # SSE events received


class StreamClient:
    """One keep-alive HTTP/1.1 connection; `post()` times a chunked SSE answer (status 200 asserted)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.address = f"{host}:{port}"

    def close(self) -> None:
        self.sock.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> StreamTiming:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.address}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body
        started = time.perf_counter()
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        header, _, rest = data.partition(b"\r\n\r\n")
        if not header.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"not a 200: {data[:400]!r}")
        lower = header.lower()
        first = time.perf_counter() if rest else None
        while not rest:
            rest = self._recv()
        first = first or time.perf_counter()
        if b"transfer-encoding: chunked" in lower:
            while not rest.endswith(b"0\r\n\r\n"):
                rest += self._recv()
        else:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += self._recv()
        ended = time.perf_counter()
        return StreamTiming(1000 * (first - started), 1000 * (ended - started), rest.count(b"data:"))

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk
