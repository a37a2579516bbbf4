"""Test helpers: the gateway in a thread (uvicorn, uvloop) or as a real process, against real peers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.http_protocol import GatewayHttpProtocol
from gateway.quota.periods import Clock, system_clock
from gateway.redis_server import free_port
from gateway.settings import ROOT, Settings


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class GatewayThread:
    """The real ASGI app under uvicorn in a background thread with its own uvloop loop."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None, clock: Clock = system_clock,
                 run_reaper: bool = False) -> None:
        self.settings = settings
        self.app = create_app(settings, catalog, clock=clock, run_reaper=run_reaper)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=settings.port, loop="uvloop",
                                http=GatewayHttpProtocol, lifespan="on", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def start(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway thread did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class GatewayProcess:
    """`python -m gateway serve` as a separate OS process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = int(env.get("AIHUB_PORT") or free_port())
        self.env = {**os.environ, **env, "AIHUB_PORT": str(self.port), "PYTHONPATH": str(ROOT)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_http(self.url + "/healthz")
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
        self.proc.wait(15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


# The fake upstream's behaviour controls: forwarded by the gateway only because tests configure them.
FAKE_CONTROL_HEADERS = frozenset({"x-fake-status", "x-fake-latency-ms", "x-fake-chunk-delay-ms", "x-fake-chunks",
                                  "x-fake-drop", "x-fake-hang", "x-fake-usage", "x-fake-cached-tokens"})


def settings_for(redis_url: str, upstream_url: str, upstream_key: str, tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"port": free_port(), "redis_url": redis_url,
                              "upstream_urls": {"default": upstream_url},
                              "upstream_keys": {"default": upstream_key}, "spool_dir": tmp / "spool",
                              "forward_headers": FAKE_CONTROL_HEADERS}
    values.update(overrides)
    return Settings(**values)


def process_env(settings: Settings) -> dict[str, str]:
    return {"REDIS_URL": settings.redis_url, "AIHUB_UPSTREAM_DEFAULT_URL": settings.upstream_urls["default"],
            "AIHUB_UPSTREAM_DEFAULT_KEY": settings.upstream_keys["default"],
            "AIHUB_SPOOL_DIR": str(settings.spool_dir), "AIHUB_CATALOG": str(settings.catalog_path),
            "AIHUB_REDIS_FAILURE_POLICY": settings.redis_failure_policy,
            "AIHUB_QUOTA_CHECKS": "1" if settings.quota_checks else "0",
            "AIHUB_FORWARD_HEADERS": ",".join(sorted(settings.forward_headers))}


def catalog_file(tmp: Path, plan: str, **fields: int) -> Path:
    """A copy of config/catalog.toml with integer fields of one plan changed (for gateway processes)."""
    text = (ROOT / "config" / "catalog.toml").read_text()
    header = f"[plans.{plan}]\n"
    start = text.index(header) + len(header)
    end = text.index("\n[", start)
    section = text[start:end]
    for name, value in fields.items():
        lines = [line for line in section.splitlines() if not line.startswith(f"{name} ")]
        section = "\n".join([f"{name} = {value}", *lines])
    path = tmp / f"catalog-{plan}.toml"
    path.write_text(text[:start] + section + text[end:])
    return path
