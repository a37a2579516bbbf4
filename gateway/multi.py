"""`make stack`: the roles as separate processes on one machine, as production runs them.

    private Redis      unless REDIS_URL is set                                  (gateway.stack, as `make up`)
    fake upstream      unless AIHUB_UPSTREAM_DEFAULT_URL is set                 (gateway.stack, as `make up`)
    worker + API       one process: the billing worker (owns chDB) and the API role's routes on AIHUB_API_PORT
                       (default AIHUB_PORT + 1)                                 (gateway.multi_roles api-worker)
    N proxies          AIHUB_PROXIES (default 2) processes on AIHUB_HOST:AIHUB_PORT, each with its own
                       SO_REUSEPORT socket: the kernel spreads connections      (gateway.multi_roles proxy)

Start: Redis, upstream, the database projected into Redis and the demo accounts seeded (as `make up`), the
worker + API (migrations and counters before any request is admitted), then the proxies; the banner (demo keys,
processes, ports) is printed once every process serves, and `<AIHUB_VAR_DIR>/runtime.json` tells the CLIs where
Redis is. The children run in their own sessions, so a terminal's Ctrl-C reaches this process only; the proxies and
the worker + API get SIGTERM from the kernel if this process dies (kill -9: gateway.children), so they stop as on
Ctrl-C instead of holding the port and chDB (the Redis and upstream are left to the next start, gateway.up_lock).

Stop (SIGINT or SIGTERM), losing nothing: the proxies first (they stop accepting, finish and settle the requests
in flight), then the worker + API (its last drain loads every settled usage row into ClickHouse), then the
upstream and Redis. A child that dies on its own stops the whole stack (exit status 1).

One stack per var dir, as `make up` (gateway.up_lock): before anything else it takes `<AIHUB_VAR_DIR>/up.lock`,
which its Redis and fake upstream inherit (the proxies and the worker + API do not); a running `make up` or
`make stack` on the same var dir makes it refuse (exit status 2), and the Redis and upstream a killed one left
running are stopped first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gateway.children import ChildNotReady, ReadyChild
from gateway.errors import ConfigError
from gateway.runtime import Runtime, read_runtime, runtime_path
from gateway.server import CANCELLED_WAIT_S
from gateway.settings import ROOT, Env, Settings, var_dir
from gateway.up_lock import StackBusy, VarDirLock, VarDirUnusable, var_dir_lock

log = logging.getLogger("aihub.stack")
START_TIMEOUT_S = 120.0       # migrations of a new chDB directory included
WORKER_STOP_TIMEOUT_S = 120.0  # the Dramatiq worker's 30 s, then the last drain


class StackError(RuntimeError):
    """A process of the stack did not start or died."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived while the stack was starting."""


@dataclass(frozen=True)
class StackSettings:
    host: str
    port: int
    api_port: int
    proxies: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StackSettings:
        env = Env(environ)
        port = env.get("AIHUB_PORT", int, Settings.port)
        settings = cls(host=env.get("AIHUB_HOST", str, Settings.host), port=port,
                       api_port=env.get("AIHUB_API_PORT", int, port + 1), proxies=env.get("AIHUB_PROXIES", int, 2))
        if settings.proxies < 1:
            raise ConfigError(f"AIHUB_PROXIES={settings.proxies} must be at least 1")
        if settings.api_port == settings.port:
            raise ConfigError(f"AIHUB_API_PORT={settings.api_port} must differ from AIHUB_PORT")
        return settings


def start_role(name: str, args: Sequence[str], env: Mapping[str, str]) -> ReadyChild:
    """`python -m gateway.multi_roles ARGS --ready-fd N` in its own session; its ready line's words: the paths it
    serves (the API process)."""
    return ReadyChild(name, ["gateway.multi_roles", *args], env, log=log, start_timeout_s=START_TIMEOUT_S)


def wait_ready(child: ReadyChild, deadline: float, stopping: threading.Event) -> None:
    """Until the child wrote its ready line; ChildNotReady when it exits first or the deadline passes, Interrupted
    when a stop signal came meanwhile."""
    if not child.wait_ready(deadline, stopping):
        raise Interrupted


class Processes:
    """The started children, stopped in the order that loses nothing: proxies, then the worker + API."""

    def __init__(self, env: Mapping[str, str], proxy_stop_s: float) -> None:
        self.env = env
        self.proxy_stop_s = proxy_stop_s
        self.worker: ReadyChild | None = None
        self.proxies: list[ReadyChild] = []

    def all(self) -> list[ReadyChild]:
        return [*self.proxies, *([self.worker] if self.worker else [])]

    def start_worker(self, api_port: int, deadline: float, stopping: threading.Event) -> ReadyChild:
        self.worker = start_role("worker + API", ["api-worker", "--port", str(api_port)], self.env)
        wait_ready(self.worker, deadline, stopping)
        return self.worker

    def start_proxies(self, count: int, deadline: float, stopping: threading.Event) -> list[ReadyChild]:
        for n in range(1, count + 1):        # kept as they start: a failed start still stops the earlier ones
            self.proxies.append(start_role(f"proxy {n}", ["proxy"], self.env))
        for proxy in self.proxies:
            wait_ready(proxy, deadline, stopping)
        return self.proxies

    def exited(self) -> ReadyChild | None:
        return next((child for child in self.all() if child.proc.poll() is not None), None)

    def stop(self) -> bool:
        """True when every child stopped by itself with status 0."""
        clean = True
        if self.proxies:
            log.info("stopping %d proxies: requests in flight finish and are settled", len(self.proxies))
            for proxy in self.proxies:
                proxy.terminate()
            deadline = time.monotonic() + self.proxy_stop_s
            for proxy in self.proxies:
                clean = proxy.wait(deadline - time.monotonic()) and clean
        if self.worker is not None:
            log.info("stopping the worker + API: last drain of the usage streams into ClickHouse")
            self.worker.terminate()
            clean = self.worker.wait(WORKER_STOP_TIMEOUT_S) and clean
        return clean


def stop_signals() -> threading.Event:
    """SIGINT and SIGTERM set the event (the stack then stops in order); a second one changes nothing."""
    stopping = threading.Event()

    def on_signal(sig: int, frame: object) -> None:
        if not stopping.is_set():
            log.info("%s: stopping the stack", signal.Signals(sig).name)
        stopping.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stopping


def check_free(host: str, port: int, what: str) -> None:
    """Refuses a port something listens on already (a `make up`, or another stack's SO_REUSEPORT proxies:
    a socket without SO_REUSEPORT cannot bind next to them)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise StackError(f"{what} port {host}:{port} is in use ({exc.strerror}); set "
                             f"{'AIHUB_PORT' if what == 'the public' else 'AIHUB_API_PORT'} to another") from None


def redact(url: str) -> str:
    """A URL without its password (REDIS_URL may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=netloc))


def processes_banner(stack: StackSettings, processes: Processes, env: Mapping[str, str], private_redis: bool,
                     fake_upstream: bool, clickhouse_url: str) -> str:
    worker = processes.worker
    assert worker is not None
    pids = ", ".join(str(p.pid) for p in processes.proxies)
    api = f"http://{stack.host}:{stack.api_port}"
    return "\n".join([
        "Processes (make stack; Ctrl-C stops them in order: proxies, worker, upstream, Redis):",
        f"  proxies       {stack.proxies} on http://{stack.host}:{stack.port} (SO_REUSEPORT), pids {pids}",
        f"  worker + API  pid {worker.pid}; API on {api}: {' '.join(worker.ready_words)}",
        f"                ClickHouse {redact(clickhouse_url)} (owned by this process)",
        f"  Redis         {redact(env['REDIS_URL'])}{' (private)' if private_redis else ' (REDIS_URL)'}",
        f"  upstream      {env['AIHUB_UPSTREAM_DEFAULT_URL']}"
        f"{' (fake)' if fake_upstream else ' (AIHUB_UPSTREAM_DEFAULT_URL)'}", ""])


def run_multi_stack() -> int:
    """`make stack`; 0 after a clean stop, 1 when a process failed or had to be killed. StackBusy when the var dir
    is taken, VarDirUnusable when it cannot be used (gateway.up_lock)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    env = dict(os.environ)
    stack = StackSettings.from_env(env)
    directory = var_dir(env)
    with var_dir_lock(directory, "make stack") as lock:      # first: a running `make up` means StackBusy, exit 2
        return _run_locked(env, stack, directory, lock)


def _run_locked(env: dict[str, str], stack: StackSettings, directory: Path, lock: VarDirLock) -> int:
    """`make stack` once it holds its var dir (`lock`, passed to its Redis and fake upstream only)."""
    from api.demo import banner as api_banner
    from api.demo import seed_owners
    from api.mount import ensure_operator_token
    from billing_worker.settings import Settings as WorkerSettings
    from gateway.catalog import load_catalog
    from gateway.stack import _fake_upstream, _private_redis, _runtime_file, banner, resync_and_seed
    running = read_runtime(runtime_path(directory))
    if running is not None:
        raise StackError(f"a stack already runs on {directory} (pid {running.pid}, {running.gateway_url}): stop "
                         "it, or set AIHUB_VAR_DIR to another directory")
    check_free(stack.host, stack.port, "the public")
    check_free(stack.host, stack.api_port, "the API")
    stopping = stop_signals()
    private_redis, fake_upstream = not env.get("REDIS_URL"), not env.get("AIHUB_UPSTREAM_DEFAULT_URL")
    with _private_redis(env, directory, lock), _fake_upstream(env, lock):
        os.environ.update(env)
        settings = Settings.from_env(env)
        worker_settings = WorkerSettings.from_env(env)
        env["CLICKHOUSE_URL"] = worker_settings.clickhouse_url      # the children open the same one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        processes = Processes(env, settings.shutdown_grace_s + CANCELLED_WAIT_S + 10)
        failed: ReadyChild | None = None
        try:
            operator_token = ensure_operator_token(env)        # in env before the API process starts
            seeded = resync_and_seed(env)
            owners = seed_owners(env, [account for account, _, _ in seeded])
            if stopping.is_set():
                raise Interrupted
            deadline = time.monotonic() + START_TIMEOUT_S
            processes.start_worker(stack.api_port, deadline, stopping)
            processes.start_proxies(stack.proxies, deadline, stopping)
            url = f"http://{stack.host}:{stack.port}"
            runtime = Runtime(pid=os.getpid(), redis_url=settings.redis_url,
                              clickhouse_url=worker_settings.clickhouse_url, gateway_url=url)
            with _runtime_file(runtime_path(directory), runtime):
                sys.stdout.write(banner(url, seeded, load_catalog(settings.catalog_path)) + "\n"
                                 + api_banner(f"http://{stack.host}:{stack.api_port}", operator_token, owners)
                                 + "\n" + processes_banner(stack, processes, env, private_redis, fake_upstream,
                                                           worker_settings.clickhouse_url) + "\n")
                sys.stdout.flush()
                while failed is None and not stopping.wait(0.2):
                    failed = processes.exited()
            if failed is not None:
                log.error("%s (pid %d) exited with status %s: stopping the stack", failed.name, failed.pid,
                          failed.proc.returncode)
        except Interrupted:
            log.info("stopped while starting")
        finally:
            clean = processes.stop()
            log.info("proxies and worker stopped; now the upstream and Redis")
    return 0 if clean and failed is None else 1


def main() -> int:
    try:
        return run_multi_stack()
    except (ConfigError, StackBusy, VarDirUnusable) as exc:
        sys.stderr.write(f"aihub stack: {exc}\n")
        return 2
    except (StackError, ChildNotReady) as exc:
        sys.stderr.write(f"aihub stack: {exc}\n")
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
