"""One aiohttp application served on a TCP port: in the caller's event loop, from a daemon thread with its own
loop, or in the foreground until SIGINT/SIGTERM. The fakes (fakes.openai_upstream, fakes.paypal) are `AppServer`s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web

SHUTDOWN_TIMEOUT_S = 1.0       # what the open connections get at a stop
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class AppServer:
    """Serves the application `build_app()` returns (a subclass gives it, and may hook `listening`).

    `url`: "http://HOST:PORT" (an IPv6 host in brackets) once listening, "" before. `thread_name`: the daemon
    thread's name, ":PORT" added. `handler_cancellation`: a handler whose client went away is cancelled (aiohttp's
    option). `loop_factory`: the event loop the thread and the foreground run (None: asyncio's default).
    A start while serving already raises RuntimeError("<class name> already started")."""

    def __init__(self, *, thread_name: str, handler_cancellation: bool = False,
                 loop_factory: LoopFactory | None = None) -> None:
        self.url = ""
        self._thread_name = thread_name
        self._handler_cancellation = handler_cancellation
        self._loop_factory = loop_factory
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def build_app(self) -> web.Application:
        """The application to serve; called once a start."""
        raise NotImplementedError

    def listening(self, url: str) -> None:
        """Called with `url` once the socket is bound, before the starter learns it; does nothing here."""

    # -- in the caller's event loop ---------------------------------------------------------------------------
    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves from the running loop on host:port (0: a free port) until `aclose()`; returns `url`."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        runner = web.AppRunner(self.build_app(), access_log=None, handler_cancellation=self._handler_cancellation,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound = runner.addresses[0]
        self._runner = runner
        url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{url_host}:{bound[1]}"
        self.listening(self.url)
        return self.url

    async def aclose(self) -> None:
        """Stops serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def serve(self, host: str, port: int, on_ready: Callable[[str], object] | None = None) -> None:
        """Serves until `request_stop()` (or cancellation), then shuts down cleanly; `on_ready(url)` once
        listening."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            url = await self.listen(host, port)
            if on_ready is not None:
                on_ready(url)
            await self._stop.wait()
        finally:
            await self.aclose()

    def request_stop(self) -> None:
        """Thread-safe: makes `serve()` return."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)

    # -- foreground (a CLI) -----------------------------------------------------------------------------------
    def run(self, host: str, port: int, on_ready: Callable[[str], object] | None = None) -> None:
        """Serves until SIGINT/SIGTERM, blocking; `on_ready(url)` once listening."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            await self.serve(host, port, on_ready)

        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=self._loop_factory) as runner:
            runner.run(main())

    # -- daemon thread ----------------------------------------------------------------------------------------
    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> str:
        """Serves from a daemon thread with its own event loop; returns `url` once listening. What made the start
        fail (OSError: the port is taken; TimeoutError: not listening within `timeout` s) is raised here, after
        `stop()`."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def target() -> None:
            try:
                with asyncio.Runner(loop_factory=self._loop_factory) as runner:
                    runner.run(self.serve(host, port, ready.set_result))
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)

        self._thread = threading.Thread(target=target, name=f"{self._thread_name}:{port}", daemon=True)
        self._thread.start()
        try:
            return ready.result(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops the thread `start_in_thread` started (idempotent); False when it still runs after `timeout` s."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        self.request_stop()
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> Self:
        self.start_in_thread()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
