"""Running the fake: in the caller's event loop, in a daemon thread, in the foreground, or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from fakes.app_server import AppServer
from fakes.openai_upstream.app import DEFAULT_MODELS, RecordedRequest, UpstreamApp

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        return None
    return uvloop.new_event_loop


class FakeUpstream(AppServer):
    """A fake OpenAI-compatible API server. See fakes/openai_upstream/__init__.py for the wire contract.

    Serving (fakes/app_server.py, on uvloop): `await start()` / `aclose()` in the caller's event loop;
    `start_in_thread()` / `stop()` (or `with FakeUpstream() as fake:`) from a daemon thread; `run()` in the
    foreground. `url` is the base URL, without /v1."""

    def __init__(
        self,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        latency_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
    ) -> None:
        super().__init__(thread_name="fake-openai-upstream", handler_cancellation=True, loop_factory=_loop_factory())
        self.app = UpstreamApp(
            api_key=api_key, models=models, latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms
        )

    def build_app(self) -> web.Application:
        return self.app.build()

    # -- introspection (same data as the /_fake/* endpoints) -------------------------------------------
    def stats(self) -> dict[str, int]:
        return self.app.stats.as_dict()

    def requests(self) -> list[RecordedRequest]:
        return list(self.app.recorded)

    def reset(self) -> None:
        self.app.reset()

    # -- serving ---------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in the running loop; returns the base URL (without /v1)."""
        return await self.listen(host, port)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread started by `start_in_thread` (idempotent); RuntimeError when it still runs after
        `timeout` s."""
        if not super().stop(timeout):
            raise RuntimeError("fake upstream thread did not stop in time")
        return True


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
    pass_fds: Sequence[int] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `python -m fakes.openai_upstream` and wait until it answers; stop it with `stop_process`.

    `new_session`: the child does not get the terminal's Ctrl-C; its owner stops it when it is done with it.
    `pass_fds`: fds the child inherits (`make up` passes its var dir lock, so the lock stays held while it runs).
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
                            start_new_session=new_session, pass_fds=tuple(pass_fds))
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
