"""Which headers cross the proxy (RFC 9110 section 7.6.1: hop-by-hop fields are not forwarded)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
# Set by the gateway itself, or never to be sent upstream (the client's credential above all).
NOT_FORWARDED = frozenset({"host", "content-length", "authorization", "api-key", "x-api-key", "cookie",
                           "accept-encoding", "expect", "forwarded", "x-forwarded-for", "x-real-ip"})
NOT_RETURNED = frozenset({"content-length", "content-encoding", "date", "server", "set-cookie"})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def request_headers(raw: list[tuple[bytes, bytes]], upstream_key: str | None, request_id: str) -> dict[str, str]:
    """Client request headers -> upstream request headers."""
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    drop = HOP_BY_HOP | NOT_FORWARDED | _connection_tokens(pairs)
    out = {name: value for name, value in pairs if name not in drop}
    out["accept-encoding"] = "identity"   # the gateway reads usage from the body
    out["x-request-id"] = request_id
    if upstream_key:
        out["authorization"] = f"Bearer {upstream_key}"
    return out


def response_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Upstream response headers -> client response headers."""
    items = [(k.lower(), v) for k, v in pairs]
    drop = HOP_BY_HOP | NOT_RETURNED | _connection_tokens(items)
    return {name: value for name, value in items if name not in drop}
