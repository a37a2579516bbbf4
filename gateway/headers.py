"""Which headers cross the proxy: an allow-list each way.

Upstream, only headers known to be safe and useful are sent (the client's credentials, cookies, other
providers' keys, forwarding and organization headers never are); the gateway sets `authorization` (the
operator's upstream key), `content-type` (of the body it checked), `accept-encoding` and `x-request-id`.
Back to the client, only the upstream's content and timing headers are returned; the gateway adds its own
rate, quota and request-id headers.

Headers stay bytes as the ASGI server and the upstream connection carry them: one pass over the client's
headers picks out what the proxy reads and what it forwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import HeadersTooLarge

FORWARDED = frozenset({"accept", "accept-language", "user-agent", "openai-beta", "idempotency-key",
                       "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                       "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count",
                       "x-stainless-timeout", "x-stainless-async", "x-stainless-read-timeout"})
NEVER_FORWARDED = frozenset({"authorization", "host", "content-length", "content-type", "cookie", "x-api-key",
                             "api-key", "proxy-authorization", "x-request-id", "transfer-encoding", "connection"})
RETURNED = frozenset({"content-type", "cache-control", "content-disposition", "openai-processing-ms",
                      "openai-version", "openai-model"})
_RETURNED = frozenset(name.encode() for name in RETURNED)
IDENTITY = (b"accept-encoding", b"identity")     # the gateway reads usage from the body
JSON_TYPE = (b"content-type", b"application/json")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")   # not in an HTTP field value (RFC 9110 5.5; tab is)
MAX_HEADERS = 100               # header fields in one request; more is refused (431)
MAX_FORWARDED_VALUE = 2048      # bytes; a longer value of a forwarded header is not forwarded (SDK values are short)


@dataclass(slots=True)
class ClientHeaders:
    """What the proxy reads from a request's headers (the first of each, as Starlette's `headers.get`), and the
    ones it would forward (one value per name: the last one given)."""

    authorization: bytes | None = None
    content_length: bytes | None = None
    forwarded: dict[bytes, bytes] | None = None


def encoded(names: Iterable[str]) -> frozenset[bytes]:
    return frozenset(name.encode("latin-1") for name in names)


def read_headers(raw: Sequence[tuple[bytes, bytes]], forwarded: frozenset[bytes]) -> ClientHeaders:
    """One pass over the request's headers (ASGI: names lowercased). A value with a control character (CR, LF,
    NUL, DEL, ...; tab is allowed), which is not a valid field value and which the upstream client refuses to
    send, or longer than MAX_FORWARDED_VALUE bytes, is never forwarded. HeadersTooLarge (431) for more than
    MAX_HEADERS header fields."""
    if len(raw) > MAX_HEADERS:
        raise HeadersTooLarge(f"The request has {len(raw)} header fields; at most {MAX_HEADERS} are accepted.")
    found = ClientHeaders(forwarded={})
    assert found.forwarded is not None
    for name, value in raw:
        if name == b"authorization":
            if found.authorization is None:
                found.authorization = value
        elif name == b"content-length":
            if found.content_length is None:
                found.content_length = value
        elif name in forwarded and len(value) <= MAX_FORWARDED_VALUE and _CONTROL.search(value) is None:
            found.forwarded[name] = value
    return found


def request_headers(client: ClientHeaders, upstream_auth: tuple[bytes, bytes] | None, request_id: bytes,
                    content_type: bytes | None) -> list[tuple[bytes, bytes]]:
    """Client request headers -> upstream request headers (the allow-list; see the module doc)."""
    out = list(client.forwarded.items()) if client.forwarded else []
    out.append(IDENTITY)
    out.append((b"x-request-id", request_id))
    if content_type:
        out.append((b"content-type", content_type))
    if upstream_auth is not None:
        out.append(upstream_auth)
    return out


def response_headers(pairs: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers (names lowercased) -> client response headers (allow-list)."""
    return [(name, value) for name, value in pairs if name in _RETURNED]


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Header dict (the gateway's own headers) -> ASGI header pairs."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
