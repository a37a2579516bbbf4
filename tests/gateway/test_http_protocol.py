"""The request head is bounded (431) and unparsable requests get the API's error shape (gateway.http_protocol)."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from gateway.accounts import AccountStore
from gateway.http_protocol import MAX_HEAD_BYTES
from tests.support import GatewayThread


@pytest.fixture
def pro_key(store: AccountStore) -> str:
    return store.issue_key(store.create_account("Acme", "pro")).api_key


def _exchange(gateway: GatewayThread, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Sends `raw` on a new connection and reads one answer (the gateway closes after these refusals)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):   # refused before all was sent: the
            sock.sendall(raw)                                               # answer is still there
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def _refused_head(status: int, headers: dict[str, str], body: bytes) -> bool:
    return (status == 431 and headers["content-type"] == "application/json" and headers["connection"] == "close"
            and json.loads(body)["error"]["code"] == "request_header_fields_too_large")


def test_a_head_over_the_limit_is_431_and_the_gateway_keeps_serving(gateway: GatewayThread) -> None:
    started = time.monotonic()
    assert _refused_head(*_exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
                                    + b"a" * (4 * MAX_HEAD_BYTES) + b"\r\n\r\n"))
    assert time.monotonic() - started < 5
    status, _, body = _exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_a_head_under_the_limit_and_a_large_body_are_not_refused(gateway: GatewayThread, pro_key: str) -> None:
    status, _, _ = _exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: "
                             + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n\r\n")
    assert status == 200
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 300_000}]}).encode()
    status, _, answer = _exchange(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  b"Authorization: Bearer " + pro_key.encode() + b"\r\nContent-Type: application/json"
                                  b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status == 200, answer       # a body arriving in the same reads as the head is not counted as head


def test_a_request_the_parser_refuses_gets_a_json_400(gateway: GatewayThread) -> None:
    status, headers, body = _exchange(gateway, b"GARBAGE\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
    status, _, body = _exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("pieces", [1, 40])
def test_a_head_over_the_limit_is_431_whether_it_arrives_whole_or_in_pieces(gateway: GatewayThread,
                                                                           pieces: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-F%d: %s\r\n" % (n, b"v" * 2000)
                                                             for n in range(40)) + b"\r\n"
    assert MAX_HEAD_BYTES < len(head) < 2 * MAX_HEAD_BYTES
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = -(-len(head) // pieces)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for start in range(0, len(head), size):
                sock.sendall(head[start:start + size])
                if pieces > 1:
                    time.sleep(0.01)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.split()[1] == b"431" and b"request_header_fields_too_large" in rest


class _Transport:
    """What the protocol needs of a transport, recording what is written (the whole head in one read cannot be
    arranged over a real socket: the kernel decides how reads are cut)."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _no_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("the app must not run for a refused head")


def test_a_head_over_the_limit_arriving_in_one_read_is_refused_before_the_app_runs() -> None:
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from gateway.http_protocol import GatewayHttpProtocol

    async def run() -> _Transport:
        config = uvicorn.Config(_no_app, http=GatewayHttpProtocol, lifespan="off", log_level="warning")
        config.load()
        protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n")
        await asyncio.sleep(0.05)
        return transport

    transport = asyncio.run(run())
    assert transport.written.startswith(b"HTTP/1.1 431 ") and b"request_header_fields_too_large" in transport.written
    assert transport.closed


def test_trailer_fields_over_the_limit_are_431(gateway: GatewayThread, pro_key: str) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + pro_key.encode()
                         + b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\nX-T: ")
            for _ in range(40):                  # a trailer field that never ends, 160 KB so far
                sock.sendall(b"t" * 4096)
                time.sleep(0.005)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.split(b"\r\n", 1)[0].split()[1] == b"431" and b"request_header_fields_too_large" in data


def test_a_chunked_body_of_many_small_chunks_is_not_refused(gateway: GatewayThread, pro_key: str) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 60_000}]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4]), body[i:i + 4]) for i in range(0, len(body), 4))
    assert len(chunked) - len(body) > 64 * 1024             # more framing than the head limit
    status, _, answer = _exchange(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  b"Authorization: Bearer " + pro_key.encode() + b"\r\nContent-Type: application/json"
                                  b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")
    assert status == 200, answer
