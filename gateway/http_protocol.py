"""uvicorn's httptools protocol with a bound on the request head and answers in the API's error shape.

uvicorn (with httptools) sets no limit on the size of a request's head: the parser keeps a header value of any
size in memory until its end arrives, and a 100 MB header held the event loop for seconds, stalling every other
request of the process. `GatewayHttpProtocol` answers 431 `request_header_fields_too_large` (then closes the
connection) when a request's head passes MAX_HEAD_BYTES, seen either way: the bytes of a request that are not
body (counted as they arrive; a chunked body's framing allowed for) pass the limit before it ends, which also
bounds trailer fields (memory stays bounded by the limit plus a read or two), or a head that arrived whole in one
read measures more (request target and header fields as the parser hands them over; the app does not run).
The answer to a request the parser refuses (uvicorn's plain-text 400 "Invalid HTTP request received.") is given
in the API's error shape too (400 `invalid_http_request`).

Both answers are written on the connection directly (no ASGI app runs), with `connection: close`.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024   # request line and header fields together (nginx's default allows 8 KiB per line)
CHUNK_FRAMING = 32           # bytes of framing allowed per chunk of a chunked body (size line and CRLFs)


def _error(message: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}})


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing: httptools raises it again as an HttpParserError, which
    uvicorn answers with `send_400_response` (here: the 431)."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=GatewayHttpProtocol)`: see the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = 0            # bytes received since the current request began
        self._body = 0                # of which body bytes (as the parser handed them over)
        self._chunks = 0              # chunks of a chunked body so far (each allows CHUNK_FRAMING more bytes)
        self._complete = False        # the current request has been read to its end
        self._too_large = False
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        super().data_received(data)
        if (not self._refused and not self._complete
                and self._received - self._body > MAX_HEAD_BYTES + CHUNK_FRAMING * self._chunks):
            self._refuse_head()      # an unfinished head, or framing and trailer fields, over the limit

    def on_message_begin(self) -> None:
        self._received = self._body = self._chunks = 0
        self._complete = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        # the head as uvicorn collected it (request target; names, values and ": ", CRLF of each field)
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._complete = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_head()
            return
        self._refuse(400, _error(f"{msg} (the HTTP/1.1 request could not be parsed)", "invalid_http_request"))

    def _refuse_head(self) -> None:
        self._refuse(431, _error(f"The request's header fields (or its trailer fields) take more than "
                                 f"{MAX_HEAD_BYTES} bytes.", "request_header_fields_too_large"))

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
