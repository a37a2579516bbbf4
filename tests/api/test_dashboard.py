"""The dashboard's serving (api/dashboard.py), without a browser: the page and every static file carry the strict
Content-Security-Policy and the framing headers, nothing inline needs 'unsafe-inline', no script writes data as
HTML, and no path leaves the static folder. Served for real: the gateway app with the dashboard's routes under
uvicorn on a free loopback port, asked with raw HTTP (no client-side path clean-up)."""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import uvicorn
from starlette.routing import BaseRoute

from api import dashboard
from gateway.app import create_app
from gateway.quota.periods import Clock, system_clock
from gateway.redis_server import free_port
from gateway.settings import Settings

STATIC = dashboard.STATIC_DIR


class ServerThread:
    """The gateway app with `routes` (as `make up` adds the API role's) under uvicorn in a thread."""

    def __init__(self, redis_url: str, tmp: Path, routes: Sequence[BaseRoute], clock: Clock = system_clock,
                 log_level: str = "warning") -> None:
        settings = Settings(port=free_port(), redis_url=redis_url, spool_dir=tmp / "spool",
                            upstream_urls={"default": "http://127.0.0.1:9"}, upstream_keys={"default": "unused"})
        app = create_app(settings, clock=clock, run_reaper=False, extra_routes=routes)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, lifespan="on",
                                                    log_level=log_level, access_log=True))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host, self.port = "127.0.0.1", settings.port
        self.url = f"http://127.0.0.1:{settings.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard's server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def raw_get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET `path` sent exactly as written (no dot-segment removal, no re-encoding)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.putrequest("GET", path, skip_accept_encoding=True)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


@contextmanager
def dashboard_only(redis_url: str, tmp: Path) -> Iterator[ServerThread]:
    with ServerThread(redis_url, tmp, dashboard.routes()) as server:
        yield server


class _Refs(HTMLParser):
    """Every tag of the page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_secure(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["default-src"] == ["'none'"] and directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"] and directives["frame-ancestors"] == ["'none'"]
    assert directives["connect-src"] == ["'self'"] and directives["form-action"] == ["'none'"]
    assert "unsafe" not in csp and "*" not in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_page_and_static_files_carry_the_csp(redis_url: str, tmp_path: Path) -> None:
    with dashboard_only(redis_url, tmp_path) as server:
        status, headers, body = server.raw_get("/dashboard")
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        assert_secure(headers)
        parser = _Refs()
        parser.feed(body.decode())
        refs = [a.get("src") or a.get("href") for tag, a in parser.tags if tag in ("script", "link", "img")]
        assert refs and all(r and r.startswith("/dashboard/static/") for r in refs), refs
        for tag, attrs in parser.tags:                   # nothing inline: the CSP would refuse it anyway
            assert not any(name.startswith("on") or name == "style" for name in attrs), (tag, attrs)
            if tag == "script":
                assert attrs.get("src") and attrs.get("type") == "module"
        assert b"<style" not in body
        assert len(re.findall(rb"<script\b", body)) == 1
        served = {"/dashboard/static/" + p.name for p in STATIC.iterdir() if p.name != "index.html"}
        assert set(refs) <= served
        for path in sorted(served):
            status, headers, content = server.raw_get(path)
            assert status == 200, path
            assert_secure(headers)
            kind = dashboard.CONTENT_TYPES[Path(path).suffix]
            assert headers["content-type"] == kind and content == (STATIC / Path(path).name).read_bytes()
        status, headers, _ = server.raw_get("/dashboard/")
        assert status == 308 and headers["location"] == "/dashboard"


def test_scripts_import_only_served_modules_and_never_write_html() -> None:
    scripts = sorted(STATIC.glob("*.js"))
    assert scripts
    names = {p.name for p in STATIC.iterdir()}
    for script in scripts:
        text = script.read_text()
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                          "new Function", "localStorage", "setAttribute(\"style\"", "location.hash"):
            assert forbidden not in text, (script.name, forbidden)
        for module in re.findall(r'from "\./([a-z]+\.js)"', text):
            assert module in names, (script.name, module)
        assert len(text.splitlines()) < 300, script.name       # small files


TRAVERSALS = (
    "/dashboard/static/../dashboard.py",
    "/dashboard/static/../../api/dashboard.py",
    "/dashboard/static/..%2fdashboard.py",
    "/dashboard/static/..%2F..%2Fdashboard.py",
    "/dashboard/static/%2e%2e/%2e%2e/dashboard.py",
    "/dashboard/static/%2e%2e%2f%2e%2e%2fdashboard.py",
    "/dashboard/static/..",
    "/dashboard/static/.",
    "/dashboard/static/",
    "/dashboard/static//etc/passwd",
    "/dashboard/static/%2fetc%2fpasswd",
    "/dashboard/static/..\\dashboard.py",
    "/dashboard/static/index.html",
    "/dashboard/static/app.js/",
    "/dashboard/static/app.js%00.css",
    "/dashboard/static/APP.JS",
)


def test_paths_outside_the_static_files_are_refused(redis_url: str, tmp_path: Path) -> None:
    with dashboard_only(redis_url, tmp_path) as server:
        for path in TRAVERSALS:
            status, headers, body = server.raw_get(path)
            assert status == 404, (path, status)        # the router's (no such route) or the dashboard's own
            if body == b"Not found.":
                assert_secure(headers)
            for leaked in (b"starlette", b"import ", b"root:", b"<html"):
                assert leaked not in body.lower(), (path, body[:200])
