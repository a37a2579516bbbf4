"""Runs the gateway under uvicorn with uvloop and httptools, and stops it without losing a request.

The HTTP protocol is uvicorn's httptools one with a bound on the request head (gateway.http_protocol).

On SIGINT or SIGTERM: stop accepting, let the requests in flight finish for up to AIHUB_SHUTDOWN_GRACE_S
(then cancel them: each is answered 503 `gateway_stopping`, or its stream ends with that error event, and
settled as cancelled: a whole answer released, a stream the upstream had begun billed; connections still busy after that
are dropped), then the lifespan's shutdown flushes every queued settle before the Redis connections close.
`serve` returns afterwards (the signal is not raised again), so `make up` can go on to drain the usage streams
before it stops its Redis.

uvicorn was kept over granian 2.8 (benchmarks/README.md, issue 12): with the same app, granian's Rust HTTP layer
used as much CPU per request or more (it does the socket work on threads of its own, so one process spreads over
both cores), was slower at one connection (p50 +0.13 ms), and its own process model and signal handling would
replace the grace period and the settle-before-exit order above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from gateway.app import create_app
from gateway.http_protocol import GatewayHttpProtocol
from gateway.settings import Settings

log = logging.getLogger("aihub.gateway")
CANCELLED_WAIT_S = 5.0   # how long the cancelled requests get to settle after the grace period


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop", http=GatewayHttpProtocol,
                          lifespan="on", access_log=False, log_level="warning", backlog=4096,
                          proxy_headers=False, server_header=False)


def reuse_port_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket other processes may bind too (SO_REUSEPORT): the kernel spreads new connections."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.set_inheritable(False)
    except BaseException:
        sock.close()
        raise
    return sock


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a bounded grace period for requests in flight, and signals that end `run()`
    rather than being raised again after it (uvicorn's default ends the process before the caller's
    clean-up: with SIGTERM at once, with SIGINT through a KeyboardInterrupt). `on_ready` runs once it accepts
    connections."""

    def __init__(self, config: uvicorn.Config, grace_s: float, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.on_ready = on_ready
        self.stop_signal: int | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            log.info("%s: stopping (up to %ss for requests in flight)", signal.Signals(sig).name, self.grace_s)
        self.handle_exit(sig, None)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    async def _wait_tasks_to_complete(self) -> None:
        """uvicorn's wait for open connections and running requests, bounded by the grace period; the
        requests still running then are cancelled and awaited, so their settles are queued before the
        lifespan's shutdown flushes the queue (a request cut so is answered 503 `gateway_stopping`, or its stream
        ends with that error event); connections still busy after that are aborted."""
        try:
            await asyncio.wait_for(super()._wait_tasks_to_complete(), self.grace_s)
        except TimeoutError:
            tasks = list(self.server_state.tasks)
            log.warning("grace period of %ss over: cancelling %d request(s) in flight", self.grace_s, len(tasks))
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CANCELLED_WAIT_S)
            for connection in list(self.server_state.connections):
                connection.shutdown()
            stuck = [task for task in tasks if not task.done()]
            if stuck:          # e.g. writing to a client that reads nothing: drop the connections, or we wait forever
                log.warning("%d request(s) still writing after cancellation: closing their connections", len(stuck))
                for connection in list(self.server_state.connections):
                    connection.transport.abort()
                await asyncio.wait(stuck, timeout=CANCELLED_WAIT_S)


def ready_writer(fd: int) -> Callable[[], None]:
    """Writes one line to the pipe `fd` (the supervisor waits for it) and closes it."""
    def ready() -> None:
        with contextlib.suppress(OSError):       # the supervisor went away: it is stopping us anyway
            os.write(fd, f"ready {os.getpid()}\n".encode())
        os.close(fd)
    return ready


def serve(settings: Settings | None = None, extra_routes: Sequence[BaseRoute] = (), *, reuse_port: bool = False,
          ready_fd: int | None = None) -> int | None:
    """Serves until SIGINT or SIGTERM; returns the signal that stopped it (None: stopped otherwise).
    `reuse_port`: bind with SO_REUSEPORT (one of `serve --workers N`); `ready_fd`: a pipe told once serving."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    settings = settings or Settings.from_env()
    app = create_app(settings, extra_routes=extra_routes)
    config = uvicorn_config(app, settings)
    server = GracefulServer(config, settings.shutdown_grace_s, ready_writer(ready_fd) if ready_fd is not None else None)
    if reuse_port:
        server.run(sockets=[reuse_port_socket(settings.host, settings.port, config.backlog)])
    else:
        server.run()
    return server.stop_signal
