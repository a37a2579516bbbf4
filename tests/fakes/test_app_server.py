"""The runner the fakes share (fakes/app_server.py): caller's loop, daemon thread, stop, errors."""

from __future__ import annotations

import threading
import urllib.request

import pytest
from aiohttp import web

from fakes.app_server import AppServer


class Hello(AppServer):
    """Answers GET / with "hello"; remembers the URL `listening` was told."""

    def __init__(self) -> None:
        super().__init__(thread_name="fake-hello")
        self.told: list[str] = []

    def build_app(self) -> web.Application:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")
        app = web.Application()
        app.router.add_get("/", hello)
        return app

    def listening(self, url: str) -> None:
        self.told.append(url)


def get(url: str) -> str:
    with urllib.request.urlopen(url + "/", timeout=5) as response:
        return str(response.read().decode())


def test_daemon_thread_serves_until_stopped() -> None:
    server = Hello()
    url = server.start_in_thread()
    assert url.startswith("http://127.0.0.1:") and server.url == url and server.told == [url]
    assert [t.name for t in threading.enumerate() if t.name == "fake-hello:0"]
    assert get(url) == "hello"
    with pytest.raises(RuntimeError, match="Hello already started"):
        server.start_in_thread()
    assert server.stop() is True
    assert server.stop() is True                      # idempotent
    assert not [t.name for t in threading.enumerate() if t.name == "fake-hello:0"]
    with pytest.raises(OSError):
        get(url)


def test_context_manager() -> None:
    with Hello() as server:
        assert get(server.url) == "hello"
    with pytest.raises(OSError):
        get(server.url)


def test_taken_port_is_raised_by_the_start() -> None:
    with Hello() as first:
        port = int(first.url.rsplit(":", 1)[1])
        second = Hello()
        with pytest.raises(OSError):
            second.start_in_thread(port=port)
        assert second.start_in_thread() != first.url      # the failed start left nothing behind
        second.stop()


async def test_in_the_callers_loop() -> None:
    server = Hello()
    url = await server.listen()
    try:
        with pytest.raises(RuntimeError, match="Hello already started"):
            await server.listen()
        assert server.told == [url]
    finally:
        await server.aclose()
    await server.aclose()                                 # idempotent
