"""uvicorn's httptools protocol with a bound on the request head and answers in the API's error shape.

uvicorn (with httptools) sets no limit on the size of a request's head: the parser keeps a header value of any
size in memory until its end arrives, and a 100 MB header held the event loop for seconds, stalling every other
request of the process. `GatewayHttpProtocol` counts the bytes received while a request's head is incomplete and
answers 431 `request_header_fields_too_large` (then closes the connection) once they pass MAX_HEAD_BYTES: memory
stays bounded by the limit plus one read. The answer to a request the parser refuses (uvicorn's plain-text 400
"Invalid HTTP request received.") is given in the API's error shape too (400 `invalid_http_request`).

Both answers are written on the connection directly (no ASGI app runs), with `connection: close`.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024   # request line and header fields together (nginx's default allows 8 KiB per line)


def _error(message: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}})


class GatewayHttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=GatewayHttpProtocol)`: see the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True          # the current request's head is not complete yet
        self._head_bytes = 0          # bytes received since it began (a read may carry body bytes too)
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self._refused:
            self._refuse(431, _error(f"The request's head (request line and header fields) is larger than "
                                     f"{MAX_HEAD_BYTES} bytes.", "request_header_fields_too_large"))

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, _error(f"{msg} (the HTTP/1.1 request could not be parsed)", "invalid_http_request"))

    def _refuse(self, status: int, body: bytes) -> None:
        self._refused = True
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", b"%d" % len(body),
                 b"\r\nconnection: close\r\n\r\n", body]
        if not self.transport.is_closing():
            self.transport.write(b"".join(head))
            self.transport.close()
