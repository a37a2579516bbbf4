"""The processes `make stack` (gateway.multi) starts besides Redis and the fake upstream.

    python -m gateway.multi_roles proxy --ready-fd N             one proxy on AIHUB_HOST:AIHUB_PORT (SO_REUSEPORT)
    python -m gateway.multi_roles api-worker --port P --ready-fd N   the worker (owns chDB) + the API role's routes

Each reads its settings once from the environment the launcher hands it, writes one line to the pipe `--ready-fd`
once it serves (the launcher waits for it), and stops on SIGTERM or SIGINT as `aihub serve` / `aihub worker` do:
a proxy stops accepting, finishes and settles the requests in flight (up to AIHUB_SHUTDOWN_GRACE_S); the
api-worker stops its HTTP server, then the embedded worker (last drain of the usage streams into ClickHouse).

Every proxy binds its own listening socket with SO_REUSEPORT, so the kernel spreads new connections over the
processes on the one public port; when one process stops, its socket closes and the others keep the port.
The proxy role imports nothing of the database or ClickHouse (the api-worker imports them lazily).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace

import uvicorn
from starlette.applications import Starlette

from gateway.server import GracefulServer, reuse_port_socket, uvicorn_config
from gateway.settings import Settings


class ReadyServer(GracefulServer):
    """GracefulServer that tells the launcher once it accepts connections (a line on the pipe `ready_fd`)."""

    def __init__(self, config: uvicorn.Config, grace_s: float, ready_fd: int | None,
                 stopped: threading.Event | None = None, paths: Sequence[str] = ()) -> None:
        super().__init__(config, grace_s)
        self.ready_fd = ready_fd
        self.stopped_early = stopped
        self.ready_line = " ".join(["ready", *paths]).encode() + b"\n"     # the paths it serves, for the banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.stopped_early is not None and self.stopped_early.is_set():
            self.handle_exit(signal.SIGTERM, None)     # the signal came between start-up and serving
        if self.started and self.ready_fd is not None:
            fd, self.ready_fd = self.ready_fd, None
            with contextlib.suppress(OSError):      # the launcher went away: it stops us anyway
                os.write(fd, self.ready_line)
            os.close(fd)


@contextlib.contextmanager
def early_stop() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM during start-up (migrations, counters) set the event instead of killing the process half
    way; the HTTP server installs its own handlers while it serves."""
    stopped = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_proxy(ready_fd: int | None) -> int:
    import logging

    from gateway.app import create_app
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    settings = Settings.from_env()
    with early_stop() as stopped:
        config = uvicorn_config(create_app(settings), settings)
        sock = reuse_port_socket(settings.host, settings.port, config.backlog)
        server = ReadyServer(config, settings.shutdown_grace_s, ready_fd, stopped)
        server.run(sockets=[sock])           # uvicorn closes the socket when it stops accepting
    return 0 if server.started else 1


def api_app(env: dict[str, str]) -> Starlette:
    """The API role's routes (gateway.stack.api_routes: provider webhooks, and what the API role adds) and a
    health check."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from gateway.stack import api_routes

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": "api-worker"})
    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"]), *api_routes(env)])


def run_api_worker(port: int, ready_fd: int | None) -> int:
    import logging

    from billing_worker.embedded import embedded_worker
    from billing_worker.settings import Settings as WorkerSettings
    from gateway.settings import environment
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    env = environment()
    settings = replace(Settings.from_env(env), port=port)
    with early_stop() as stopped, embedded_worker(WorkerSettings.from_env(env)):
        if stopped.is_set():
            return 0
        app = api_app(env)
        paths = [str(getattr(route, "path", "")) for route in app.routes]
        server = ReadyServer(uvicorn_config(app, settings), settings.shutdown_grace_s, ready_fd, stopped, paths)
        server.run()
        if not server.started:
            return 1                     # the port could not be bound (uvicorn logged why)
        logging.getLogger("aihub.stack").info("API stopped; last drain of the usage streams")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.multi_roles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["proxy", "api-worker"])
    parser.add_argument("--ready-fd", type=int, default=None, help="pipe to write one line to once serving")
    parser.add_argument("--port", type=int, default=None, help="api-worker: the API role's port")
    args = parser.parse_args(argv)
    if args.role == "proxy":
        return run_proxy(args.ready_fd)
    if args.port is None:
        parser.error("api-worker needs --port")
    return run_api_worker(args.port, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
