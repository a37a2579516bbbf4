"""Runs the gateway under uvicorn with uvloop and httptools, and stops it without losing a request.

On SIGINT or SIGTERM: stop accepting, let the requests in flight finish for up to AIHUB_SHUTDOWN_GRACE_S
(then cancel them: their reservations are settled as cancelled), then the lifespan's shutdown flushes
every queued settle before the Redis connections close. `serve` returns afterwards (the signal is not
raised again), so `make up` can go on to drain the usage streams before it stops its Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from gateway.app import create_app
from gateway.settings import Settings

log = logging.getLogger("aihub.gateway")
CANCELLED_WAIT_S = 5.0   # how long the cancelled requests get to settle after the grace period


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                          lifespan="on", access_log=False, log_level="warning", backlog=4096,
                          proxy_headers=False, server_header=False)


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a bounded grace period for requests in flight, and signals that end `run()`
    rather than being raised again after it (uvicorn's default ends the process before the caller's
    clean-up: with SIGTERM at once, with SIGINT through a KeyboardInterrupt)."""

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
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

    async def _wait_tasks_to_complete(self) -> None:
        """uvicorn's wait for open connections and running requests, bounded by the grace period; the
        requests still running then are cancelled and awaited, so their settles are queued before the
        lifespan's shutdown flushes the queue."""
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


def serve(settings: Settings | None = None, extra_routes: Sequence[BaseRoute] = ()) -> int | None:
    """Serves until SIGINT or SIGTERM; returns the signal that stopped it (None: stopped otherwise)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings or Settings.from_env()
    app = create_app(settings, extra_routes=extra_routes)
    server = GracefulServer(uvicorn_config(app, settings), settings.shutdown_grace_s)
    server.run()
    return server.stop_signal
