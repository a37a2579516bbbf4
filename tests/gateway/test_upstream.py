"""gateway.upstream against real sockets: a scripted HTTP/1.1 server that records what reached it byte for byte
(request line, header lines, connection), and answers as a misbehaving upstream would (redirects, compressed
bodies, streams that pause or stall, answers cut short, garbage, resets)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

import openai
import pytest

from gateway.accounts import AccountStore
from gateway.settings import ROOT, Settings
from gateway.upstream import UpstreamBroken, UpstreamResponse, Upstreams
from tests.gateway.test_proxy import MESSAGES, _close_clients, sdk, stats  # noqa: F401 (the fixture closes sdk())
from tests.support import GatewayThread

JSON_HEADERS = [(b"accept-encoding", b"identity"), (b"x-request-id", b"req_test"),
                (b"content-type", b"application/json"), (b"authorization", b"Bearer sk-upstream")]


@dataclass
class Seen:
    """One request as it arrived."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]    # names lowercased, values as sent
    body: bytes
    connection: int

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]   # -> keep the connection open


@dataclass
class RawUpstream:
    """A loopback HTTP/1.1 server; each request path answered by a handler that writes raw bytes."""

    handlers: dict[bytes, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    closed: set[int] = field(default_factory=set)      # connections the client closed
    open_now: int = 0
    most_open: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: int = 0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ssl: SSLContext | None = None) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        number = self._connections
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed.add(number)
                    return
                line, *lines = head[:-4].split(b"\r\n")
                method, target, _ = line.split(b" ")
                headers = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(b":") for h in lines)]
                length = int(dict(headers).get(b"content-length", b"0"))
                seen = Seen(method, target, headers, await reader.readexactly(length), number)
                self.seen.append(seen)
                handler = self.handlers.get(target.split(b"?")[0], answer(200, b"ok"))
                if not await handler(seen, writer):
                    return
        except asyncio.CancelledError:     # stop(); ended quietly (3.11's start_server logs a cancelled handler)
            return
        finally:
            self.open_now -= 1
            writer.close()

    async def wait_closed(self, connection: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while connection not in self.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return connection in self.closed


def answer(status: int, body: bytes, *headers: bytes) -> Handler:
    async def handle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 %d X\r\n%scontent-length: %d\r\n\r\n%s"
                     % (status, b"".join(h + b"\r\n" for h in headers), len(body), body))
        await writer.drain()
        return True
    return handle


def settings(url: str, **overrides: Any) -> Settings:
    return Settings(**{"upstream_urls": {"default": url}, **overrides})


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    server = await RawUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def upstreams(raw: RawUpstream) -> AsyncIterator[Callable[..., Upstreams]]:
    made: list[Upstreams] = []

    def make(url: str | None = None, **overrides: Any) -> Upstreams:
        made.append(Upstreams(settings(url or raw.url, **overrides), ("default",)))
        return made[-1]
    yield make
    for one in made:
        await one.close()


async def get(ups: Upstreams, path: bytes, headers: list[tuple[bytes, bytes]] | None = None,
              method: bytes = b"POST", body: bytes = b"{}") -> UpstreamResponse:
    return await ups.request("default", method, path, JSON_HEADERS if headers is None else headers, body)


# -- what is sent ----------------------------------------------------------------------------------------------


PLAIN_PATHS = [b"/v1/chat/completions", b"/v1/models/ft:gpt-4o-mini:acme:tuned@2024~a_b-c.d", b"/v1/a..b/...x",
               b"/v1/chat%2Fcompletions", b"/v1/%7euser/%41"]


async def test_the_path_is_sent_byte_for_byte_after_the_base_path(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    ups = upstreams(raw.url + "/openai/")
    for path in PLAIN_PATHS:
        response = await get(ups, path)
        assert await response.read() == b"ok"
    assert [s.target for s in raw.seen] == [b"/openai" + p for p in PLAIN_PATHS]


@pytest.mark.parametrize("path", [b"/v1/./chat/completions", b"/v1/x/../chat/completions",
                                  b"/v1/%2e%2e/chat/completions", b"/v1/%2E/chat", b"/v1/chat completions",
                                  b"/v1\\chat", b"/v1/chat/completions#x"])
async def test_a_path_the_url_parser_would_rewrite_is_never_sent(
        raw: RawUpstream, upstreams: Callable[..., Upstreams], path: bytes) -> None:
    ups = upstreams()
    with pytest.raises(ValueError, match="byte for byte"):
        await get(ups, path)
    assert raw.seen == []


async def test_only_the_given_headers_are_sent_with_what_every_client_adds(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    """Host and content-length, and reqwest's `accept: */*` and user-agent when the caller gives none: its
    default headers can be overridden, not removed. No accept-encoding of its own, no cookie, no referer."""
    ups = upstreams()
    await (await get(ups, b"/v1/chat/completions", body=b'{"a": 1}')).read()
    given = [*JSON_HEADERS, (b"accept", b"application/json"), (b"user-agent", b"OpenAI/Python 1.0"),
             (b"accept-language", b"caf\xc3\xa9")]
    await (await get(ups, b"/v1/chat/completions", given)).read()
    first, second = raw.seen
    assert first.method == b"POST" and first.body == b'{"a": 1}'
    host = (b"host", f"127.0.0.1:{raw.port}".encode())
    assert sorted(h for h in first.headers if h not in JSON_HEADERS) == [
        (b"accept", b"*/*"), (b"content-length", b"8"), host, (b"user-agent", b"python-pyreqwest/1.0.0")]
    assert sorted(h for h in second.headers if h not in given) == [(b"content-length", b"2"), host]
    assert second.values(b"accept-language") == [b"caf\xc3\xa9"]       # UTF-8 goes out byte for byte
    assert second.values(b"accept-encoding") == [b"identity"]


async def test_no_cookie_jar(raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    raw.handlers[b"/v1/login"] = answer(200, b"ok", b"set-cookie: session=1; Path=/")
    ups = upstreams()
    await (await get(ups, b"/v1/login")).read()
    await (await get(ups, b"/v1/chat/completions")).read()
    assert raw.seen[1].values(b"cookie") == []


async def test_several_upstreams_share_one_client(raw: RawUpstream) -> None:
    other = await RawUpstream().start()
    ups = Upstreams(Settings(upstream_urls={"a": raw.url, "b": other.url + "/proxy"}), ("a", "b"))
    try:
        for name in ("a", "b", "a"):
            response = await ups.request(name, b"GET", b"/v1/models", [], b"")
            assert await response.read() == b"ok"
        assert [s.target for s in raw.seen] == [b"/v1/models"] * 2
        assert [s.target for s in other.seen] == [b"/proxy/v1/models"]
        assert ups.default == "a"
    finally:
        await ups.close()
        await other.stop()


# -- what is received --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(raw: RawUpstream, upstreams: Callable[..., Upstreams],
                                          status: int) -> None:
    raw.handlers[b"/v1/chat/completions"] = answer(status, b"moved", b"location: /v1/elsewhere")
    response = await get(upstreams(), b"/v1/chat/completions")
    assert response.status == status and response.header(b"location") == b"/v1/elsewhere"
    assert await response.read() == b"moved"
    assert [s.target for s in raw.seen] == [b"/v1/chat/completions"]


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"br", b"zstd"])
async def test_bodies_are_not_decompressed(raw: RawUpstream, upstreams: Callable[..., Upstreams],
                                           encoding: bytes) -> None:
    """The encoded bytes come through as sent (for br, zstd and deflate they are not even valid: a client that
    decoded them would fail)."""
    body = gzip.compress(b'{"usage": {}}') if encoding == b"gzip" else b"\x8b\x00not " + encoding
    raw.handlers[b"/v1/chat/completions"] = answer(200, body, b"content-encoding: " + encoding)
    response = await get(upstreams(), b"/v1/chat/completions")
    assert response.header(b"content-encoding") == encoding
    assert await response.read() == body


async def test_response_headers_are_lowercased_bytes_in_their_repeats(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    raw.handlers[b"/v1/chat/completions"] = answer(
        200, b"{}", b"Content-Type: application/json", b"OpenAI-Processing-Ms: 12", b"X-Many: 1", b"X-Many: 2",
        b"X-Odd: caf\xe9")
    response = await get(upstreams(), b"/v1/chat/completions")
    assert response.status == 200
    assert response.header(b"content-type") == b"application/json"
    assert response.header(b"openai-processing-ms") == b"12"
    assert [v for k, v in response.headers if k == b"x-many"] == [b"1", b"2"]
    # pyreqwest gives no access to a value that is not visible ASCII: that header is left out, the others stay
    assert response.header(b"x-odd") is None
    assert all(k == k.lower() and isinstance(v, bytes) for k, v in response.headers)
    await response.read()


# -- streaming and the connection's life ---------------------------------------------------------------------------


async def test_request_returns_with_the_headers_and_chunks_come_as_sent(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    steps = [asyncio.Event() for _ in range(3)]

    async def sse(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for number, step in enumerate(steps):
            await step.wait()
            event = b"data: %d\n\n" % number
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        writer.write(b"0\r\n\r\n")
        return True
    raw.handlers[b"/v1/chat/completions"] = sse
    response = await asyncio.wait_for(get(upstreams(), b"/v1/chat/completions"), 5)
    assert response.status == 200 and response.header(b"content-type") == b"text/event-stream"
    chunks = response.chunks()
    for number, step in enumerate(steps):
        step.set()            # the next event is sent only now: each one arrives without waiting for the rest
        assert await asyncio.wait_for(anext(chunks), 5) == b"data: %d\n\n" % number
        assert not response.complete
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(chunks), 5)
    assert response.complete
    response.close()


async def test_a_finished_body_frees_its_connection(raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    ups = upstreams()
    for _ in range(3):
        response = await get(ups, b"/v1/chat/completions")
        assert await response.read() == b"ok" and response.complete
        response.close()
    chunked = await get(ups, b"/v1/chat/completions")
    assert [c async for c in chunked.chunks()] == [b"ok"] and chunked.complete
    chunked.close()
    assert {s.connection for s in raw.seen} == {1} and raw.closed == set()


async def test_closing_an_unfinished_body_aborts_the_upstream_request(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    async def stalls(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 1000\r\n\r\n"
                     b"data: 1\n\n")
        return True       # then silent, reading: only the client closing ends this connection
    raw.handlers[b"/v1/chat/completions"] = stalls
    ups = upstreams()
    response = await get(ups, b"/v1/chat/completions")
    assert await anext(response.chunks()) == b"data: 1\n\n"
    response.close()
    assert not response.complete
    assert await raw.wait_closed(1), "the upstream connection stayed open"
    follow_up = await get(ups, b"/v1/models")          # a new connection
    assert await follow_up.read() == b"ok"
    assert raw.seen[-1].connection == 2


async def test_the_pool_holds_at_most_pool_size_connections(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.1)
        return await answer(200, b"ok")(seen, writer)
    raw.handlers[b"/v1/chat/completions"] = slow
    ups = upstreams(upstream_pool_size=2)

    async def one() -> bytes:
        return await (await get(ups, b"/v1/chat/completions")).read()
    assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
    assert raw.most_open == 2


# -- errors ------------------------------------------------------------------------------------------------------


async def test_refused_is_upstream_broken(upstreams: Callable[..., Upstreams]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(UpstreamBroken):
        await get(upstreams(f"http://127.0.0.1:{port}"), b"/v1/chat/completions")


async def test_connect_timeout_is_a_timeout_error(upstreams: Callable[..., Upstreams]) -> None:
    """A listener whose backlog is full: the kernel drops the SYN and the connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await get(upstreams(f"http://127.0.0.1:{port}", connect_timeout_s=0.3), b"/v1/chat/completions")
            assert time.monotonic() - started < 3
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize("kind", ["reset", "garbage", "closed"])
async def test_no_answer_is_upstream_broken(raw: RawUpstream, upstreams: Callable[..., Upstreams],
                                            kind: str) -> None:
    async def handle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif kind == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return False
    raw.handlers[b"/v1/chat/completions"] = handle
    with pytest.raises(UpstreamBroken):
        await get(upstreams(), b"/v1/chat/completions")


async def test_a_body_cut_short_is_upstream_broken(raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    async def short(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\": ")
        return False

    async def chunked(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        return False
    raw.handlers[b"/v1/short"] = short
    raw.handlers[b"/v1/chunked"] = chunked
    ups = upstreams()
    response = await get(ups, b"/v1/short")
    with pytest.raises(UpstreamBroken):
        await response.read()
    assert not response.complete
    response = await get(ups, b"/v1/chunked")
    got = []
    with pytest.raises(UpstreamBroken):
        async for chunk in response.chunks():
            got.append(chunk)
    assert got == [b"data: 1\n\n"] and not response.complete
    response.close()


async def test_the_read_timeout_is_an_idle_gap_not_a_deadline(
        raw: RawUpstream, upstreams: Callable[..., Upstreams]) -> None:
    def paced(gaps: list[float]) -> Handler:
        async def handle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for gap in gaps:
                await asyncio.sleep(gap)
                writer.write(b"2\r\nok\r\n")
            writer.write(b"0\r\n\r\n")
            return True
        return handle
    raw.handlers[b"/v1/steady"] = paced([0.15] * 8)        # 1.2 s in all, never 0.6 s without data
    raw.handlers[b"/v1/stalls"] = paced([0.1, 3.0])
    ups = upstreams(read_timeout_s=0.6)
    started = time.monotonic()
    response = await get(ups, b"/v1/steady")
    assert await response.read() == b"ok" * 8
    assert time.monotonic() - started > 1.0
    response = await get(ups, b"/v1/stalls")
    got = []
    with pytest.raises(TimeoutError):
        async for chunk in response.chunks():
            got.append(chunk)
    assert got == [b"ok"]
    response.close()

    async def hangs(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3)
        return False
    raw.handlers[b"/v1/hangs"] = hangs
    with pytest.raises(TimeoutError):
        await get(ups, b"/v1/hangs")


# -- HTTPS ------------------------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for `localhost` signed by it: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aihub test CA")])
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage, critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_https_upstreams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               upstreams: Callable[..., Upstreams]) -> None:
    """Verified against the system's trust store (SSL_CERT_FILE names it here); an unknown issuer is refused."""
    ca, cert, key = _certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await RawUpstream().start(ssl=context)
    url = f"https://localhost:{server.port}"
    try:
        with pytest.raises(UpstreamBroken, match="certificate"):
            await get(upstreams(url), b"/v1/chat/completions")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        response = await get(upstreams(url), b"/v1/chat/completions")
        assert response.status == 200 and await response.read() == b"ok"
        assert [s.target for s in server.seen] == [b"/v1/chat/completions"]
    finally:
        await server.stop()


# -- the runtime ------------------------------------------------------------------------------------------------


EXIT_SCRIPT = """
import asyncio, json, os, sys
from gateway.settings import Settings
from gateway.upstream import Upstreams
import gateway.app, gateway.workers

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

async def main():
    ups = Upstreams(Settings(upstream_urls={"default": sys.argv[1]}), ("default",))
    before = threads()
    for _ in range(3):
        try:
            await (await ups.request("default", b"GET", b"/v1/models", [], b"")).read()
        except OSError:
            pass
    print(json.dumps([before, threads()]))
    await ups.close()
asyncio.run(main())
"""


def test_the_runtime_starts_with_the_first_request_and_the_process_exits_cleanly() -> None:
    """`aihub serve --workers N` imports the app in the supervisor: only a process that sends requests starts
    pyreqwest's Tokio thread. And once `close()` returned, the process ends with status 0: a pyreqwest thread
    still busy while Python finalizes aborts it (SIGABRT, about one exit in four after a refused request
    without the pause in `close()`), so a few processes end here, after answers and after refusals."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{unused.getsockname()[1]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT, refused], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(12)]
    ended = [(proc.returncode, out, err) for proc in procs for out, err in [proc.communicate(timeout=120)]]
    for status, out, err in ended:
        assert status == 0, err.decode()[-2000:]
        before, after = json.loads(out)
        assert not [name for name in before if name.startswith("pyreqwest")]
        assert "pyreqwest" in after        # the runtime's thread (DNS lookups run on "pyreqwest-worker" threads)


# -- through the gateway --------------------------------------------------------------------------------------------


def test_through_the_gateway_a_slow_stream_within_the_read_timeout_is_relayed_whole(
        make_gateway: Callable[..., GatewayThread], store: AccountStore) -> None:
    """read_timeout_s bounds each silence, not the answer: 6 events 0.3 s apart under a 0.5 s read timeout."""
    key = store.issue_key(store.create_account("Acme", "pro")).api_key
    gateway = make_gateway(read_timeout_s=0.5)
    client = sdk(gateway, key, default_headers={"X-Fake-Chunk-Delay-Ms": "300", "X-Fake-Chunks": "6"})
    started = time.monotonic()
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert time.monotonic() - started > 1.5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == \
        ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"]


def test_through_the_gateway_a_stream_silent_past_the_read_timeout_ends_as_broken(
        make_gateway: Callable[..., GatewayThread], store: AccountStore, upstream: Any) -> None:
    key = store.issue_key(store.create_account("Acme", "pro")).api_key
    gateway = make_gateway(read_timeout_s=0.5)
    client = sdk(gateway, key, default_headers={"X-Fake-Chunk-Delay-Ms": "1500", "X-Fake-Chunks": "3"})
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content
    with pytest.raises(openai.APIError, match="broke off"):
        list(stream)
    deadline = time.monotonic() + 5      # the gateway closed its upstream request
    while stats(upstream)["streams_cancelled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(upstream)["streams_cancelled"] == 1 and stats(upstream)["streams_completed"] == 0
