"""Running the fake: in the caller's event loop, in a daemon thread, in the foreground, or as a subprocess."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from aiohttp import web

from fakes.openai_upstream.app import DEFAULT_MODELS, RecordedRequest, UpstreamApp

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHUTDOWN_TIMEOUT_S = 1.0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        return None
    return uvloop.new_event_loop


class FakeUpstream:
    """A fake OpenAI-compatible API server. See fakes/openai_upstream/__init__.py for the wire contract."""

    def __init__(
        self,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        latency_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
    ) -> None:
        self.app = UpstreamApp(
            api_key=api_key, models=models, latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms
        )
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- introspection (same data as the /_fake/* endpoints) -------------------------------------------
    def stats(self) -> dict[str, int]:
        return self.app.stats.as_dict()

    def requests(self) -> list[RecordedRequest]:
        return list(self.app.recorded)

    def reset(self) -> None:
        self.app.reset()

    # -- in the caller's event loop ------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in the running loop; returns the base URL (without /v1)."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream already started")
        runner = web.AppRunner(
            self.app.build(), access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
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
        return self.url

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def serve(self, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until `request_stop()` (or cancellation), then shut down cleanly."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            url = await self.start(host, port)
            if on_ready is not None:
                on_ready(url)
            await self._stop.wait()
        finally:
            await self.aclose()

    def request_stop(self) -> None:
        """Thread-safe: make `serve()` return."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)

    # -- foreground (CLI) ------------------------------------------------------------------------------
    def run(self, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
        """Block serving until SIGINT/SIGTERM."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            await self.serve(host, port, on_ready)

        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())

    # -- daemon thread -------------------------------------------------------------------------------
    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> str:
        """Serve from a daemon thread with its own event loop; returns the base URL (without /v1)."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def target() -> None:
            try:
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(self.serve(host, port, ready.set_result))
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)

        self._thread = threading.Thread(target=target, name=f"fake-openai-upstream:{port}", daemon=True)
        self._thread.start()
        try:
            return ready.result(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread started by `start_in_thread` (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.request_stop()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("fake upstream thread did not stop in time")

    def __enter__(self) -> FakeUpstream:
        self.start_in_thread()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_fake/stats", timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def spawn_process(
    port: int = 0,
    api_key: str | None = None,
    *,
    host: str = "127.0.0.1",
    latency_ms: float = 0.0,
    chunk_delay_ms: float = 0.0,
    models: Sequence[str] | None = None,
    timeout: float = 15.0,
    new_session: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `python -m fakes.openai_upstream` and wait until it answers; stop it with `stop_process`.

    `new_session`: the child does not get the terminal's Ctrl-C; its owner stops it when it is done with it.
    """
    port = port or free_port(host)
    cmd = [sys.executable, "-m", "fakes.openai_upstream", "--host", host, "--port", str(port)]
    cmd += ["--latency-ms", str(latency_ms), "--chunk-delay-ms", str(chunk_delay_ms)]
    if api_key:
        cmd += ["--api-key", api_key]
    if models is not None:
        cmd += ["--models", ",".join(models)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=new_session)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while not _answers(url):
        if proc.poll() is not None:
            raise RuntimeError(f"fake upstream exited with code {proc.returncode} before answering on {url}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise TimeoutError(f"fake upstream did not answer on {url} within {timeout}s")
        time.sleep(0.02)
    return proc, url


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM (graceful), then SIGKILL after `timeout`; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
