"""Pooled keep-alive HTTP client to the model upstreams: pyreqwest (Rust reqwest and hyper; a request and its
read cost about 52 us of CPU against aiohttp's 79, and httpx was 15x slower than aiohttp on the hot path), behind
the small interface the proxy uses (`UpstreamResponse`: status, headers as lowercased bytes, `read()`,
`chunks()`, `close()`).

`request()` sends the method and the plain path (byte for byte as checked, after the upstream's base path), the
given headers and the body, and returns once the status and headers are in. Errors are OSErrors: TimeoutError
(connect or read timeout; the read timeout is per read, an idle gap), UpstreamBroken (refused, reset, closed early,
malformed answer). Redirects are not followed, bodies are not decompressed, no cookie jar is kept, no proxy from
the environment is used.

What pyreqwest (0.15) does that the code below accounts for:
* Every request is streamed with a read buffer of 0 bytes: with pyreqwest's default (64 KiB) `request()` would
  wait for 64 KiB of body (or its end) before returning, and chunks would come in 64 KiB batches, holding SSE
  events back. A whole body is then read with one call (`read()`).
* Closing a streamed request is asynchronous (`StreamRequest.__aexit__`); dropping it does not close an upstream
  that is silent. `close()` of an unfinished body therefore runs `__aexit__` in a task (the connection is
  closed, the upstream sees the request go away); a body read to its end has already given its connection back.
* Cancelling `request()` before the headers are in does not stop the request inside pyreqwest: it runs on until
  its headers come (then the unread response is dropped and its connection closed) or the read timeout. The
  gateway cancels a request there only when the server stops.
* reqwest adds `accept: */*` and `user-agent: python-pyreqwest/1.0.0` to a request that has none (its default
  headers can be overridden, not removed; aiohttp added `accept: */*` too), and `host` and `content-length`.
* Header values are `str` both ways. Request values are sent UTF-8 encoded: bytes that are valid UTF-8 go out
  unchanged, others as their latin-1 reading (what aiohttp sent). A response header value that is not visible
  ASCII cannot be read through pyreqwest: that header is left out of `headers`.
* The Tokio runtime (single-threaded: a thread named "pyreqwest"; DNS lookups on "pyreqwest-worker" threads)
  starts with the first client built, in the process that serves: `Upstreams` builds its client at the first
  request. `aihub serve --workers N` spawns (fork and exec) each worker, so no runtime crosses a fork.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import RequestError
from pyreqwest.http import HeaderMap, Url
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from gateway.errors import ConfigError
from gateway.settings import Settings

KEEPALIVE_S = 15.0
CLOSE_SETTLE_S = 0.1
MAX_TARGETS_CACHED = 1_000
MULTITHREADED_RUNTIME = False   # measured on 2 cores: no cheaper per request than the single-threaded runtime


class UpstreamBroken(ConnectionError):
    """The upstream could not be reached, closed the connection early or sent something that is not HTTP."""


def _os_error(exc: RequestError) -> OSError:
    """pyreqwest's request errors as the OSErrors of this module: its timeouts (connect, read, write, waiting for a
    pool slot) are TimeoutErrors already; anything else that failed the request (connect error, reset, body cut
    short, not HTTP, client closed) is UpstreamBroken."""
    causes = "; ".join(cause["message"] for cause in exc.details.get("causes") or ())
    message = f"{type(exc).__name__}: {exc.message}" + (f" ({causes})" if causes else "")
    if isinstance(exc, TimeoutError):
        return TimeoutError(message)
    return UpstreamBroken(message)


def _header_text(value: bytes) -> str:
    """A request header value as pyreqwest takes it (str, sent UTF-8 encoded)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _response_headers(headers: HeaderMap) -> list[tuple[bytes, bytes]]:
    try:
        return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    except ValueError:    # a value that is not visible ASCII: pyreqwest has no str (nor bytes) for it
        pairs = []
        for name in dict.fromkeys(headers.keys()):
            try:
                values = headers.getall(name)
            except ValueError:
                continue
            pairs += [(name.encode("latin-1"), value.encode("latin-1")) for value in values]
        return pairs


class UpstreamResponse:
    """Status and headers (names lowercased, bytes), then the body: `read()` it whole or iterate `chunks()`;
    `close()` when done with it (an unfinished body closes the connection, a finished one frees it)."""

    __slots__ = ("_closing", "_request", "_response", "complete", "headers", "status")

    def __init__(self, request: StreamRequest, response: Response, closing: set[asyncio.Task[None]]) -> None:
        self._request: StreamRequest | None = request
        self._response = response
        self._closing = closing
        self.status = response.status
        self.headers = _response_headers(response.headers)
        self.complete = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes:
        """The whole body (in memory); frees the connection."""
        try:
            body = await self._response.bytes()
        except RequestError as exc:
            self.close()
            raise _os_error(exc) from None
        self.complete = True
        self.close()
        return body.to_bytes()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        reader = self._response.body_reader
        try:
            while (data := await reader.read_chunk()) is not None:
                yield data.to_bytes()
        except RequestError as exc:
            raise _os_error(exc) from None
        self.complete = True

    def close(self) -> None:
        request, self._request = self._request, None
        if request is None or self.complete:
            return          # a body read to its end has given its connection back already
        try:                # an unfinished one: closing it (asynchronous in pyreqwest) closes its connection
            task = asyncio.get_running_loop().create_task(request.__aexit__(None, None, None))
        except RuntimeError:      # no loop running any more (the process is ending): the connection goes with it
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class Upstreams:
    """One pyreqwest client for all upstreams; `request(name, ...)` sends one request to one of them."""

    def __init__(self, settings: Settings, names: tuple[str, ...]) -> None:
        missing = [n for n in names if n not in settings.upstream_urls]
        if missing:
            raise ConfigError(", ".join(f"AIHUB_UPSTREAM_{n.upper()}_URL is required but not set"
                                        for n in missing))
        self.urls = {n: settings.upstream_urls[n].rstrip("/") for n in names}
        self._bases: dict[str, str] = {}     # each base URL as pyreqwest spells it (host lowercased, ...)
        for name, url in self.urls.items():
            if not url.startswith(("http://", "https://")) or not Url.is_valid(url):
                raise ConfigError(f"AIHUB_UPSTREAM_{name.upper()}_URL: not an http(s) URL: {url!r}")
            self._bases[name] = str(Url(url)).rstrip("/")
        self.keys = {n: settings.upstream_keys.get(n) for n in names}
        self.default = names[0]
        # the credential header of each upstream, ready to send
        self.auth = {n: (b"authorization", f"Bearer {key}".encode("latin-1")) if key else None
                     for n, key in self.keys.items()}
        self.connect_timeout = timedelta(seconds=settings.connect_timeout_s)
        self.read_timeout = timedelta(seconds=settings.read_timeout_s)
        self.pool_size = settings.upstream_pool_size
        self._client: Client | None = None
        self._targets: dict[tuple[str, bytes], Url] = {}
        self._closing: set[asyncio.Task[None]] = set()     # unfinished responses being closed

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = (
                ClientBuilder()
                .max_connections(self.pool_size)           # requests in flight, one connection each (HTTP/1.1)
                .pool_max_idle_per_host(self.pool_size)
                .pool_idle_timeout(timedelta(seconds=KEEPALIVE_S))
                .connect_timeout(self.connect_timeout)
                .read_timeout(self.read_timeout)           # per read: resets after each one
                .follow_redirects(False)
                .referer(False)
                .gzip(False).brotli(False).zstd(False).deflate(False)
                .default_cookie_store(False)
                .no_proxy()
                .http1_only()
                .http1_lower_case_headers()
                .runtime_multithreaded(MULTITHREADED_RUNTIME)
                .build())
        return self._client

    def url(self, name: str, path: bytes) -> str:
        """The upstream URL of a plain path (gateway.paths), taken as already encoded: sent byte for byte."""
        return f"{self._bases[name]}{path.decode('ascii')}"

    def _target(self, name: str, path: bytes) -> Url:
        """`url()` parsed once per (upstream, path); ValueError for a path the URL parser would change (dot
        segments, characters it escapes, a fragment it drops): such a path is never sent as something else than
        what was checked."""
        key = (name, path)
        url = self._targets.get(key)
        if url is None:
            wanted = self.url(name, path)
            url = Url(wanted)
            if str(url) != wanted or url.fragment is not None:
                raise ValueError(f"{path!r} would not reach the upstream byte for byte (as {str(url)!r})")
            if len(self._targets) >= MAX_TARGETS_CACHED:
                self._targets.clear()
            self._targets[key] = url
        return url

    async def request(self, name: str, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> UpstreamResponse:
        try:
            sent = [(k.decode("latin-1"), v.decode()) for k, v in headers]
        except UnicodeDecodeError:
            sent = [(k.decode("latin-1"), _header_text(v)) for k, v in headers]
        request = (self.client.request(method.decode("ascii"), self._target(name, path)).headers(sent)
                   .body_bytes(body).streamed_read_buffer_limit(0).build_streamed())
        try:
            response = await request.__aenter__()
        except RequestError as exc:
            raise _os_error(exc) from None
        return UpstreamResponse(request, response, self._closing)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.gather(*self._closing, return_exceptions=True)
            await client.close()
            # pyreqwest's close() cancels what the client still does without waiting for it: a moment for its
            # thread to finish that while Python runs (one that calls into Python while the interpreter
            # finalizes aborts the process: SIGABRT at exit instead of status 0)
            await asyncio.sleep(CLOSE_SETTLE_S)


async def form_body(form: aiohttp.FormData) -> tuple[bytes, bytes]:
    """A multipart form (gateway.forms) as the bytes and content-type sent upstream."""
    payload = form()
    return await payload.as_bytes(), payload.content_type.encode("latin-1")
