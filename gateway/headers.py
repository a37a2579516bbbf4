"""Which headers cross the proxy: an allow-list each way.

Upstream, only headers known to be safe and useful are sent (the client's credentials, cookies, other
providers' keys, forwarding and organization headers never are); the gateway sets `authorization` (the
operator's upstream key), `content-type` (of the body it checked), `accept-encoding` and `x-request-id`.
Back to the client, only the upstream's content and timing headers are returned; the gateway adds its own
rate, quota and request-id headers.
"""

from __future__ import annotations

from collections.abc import Iterable

FORWARDED = frozenset({"accept", "accept-language", "user-agent", "openai-beta", "idempotency-key",
                       "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                       "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count",
                       "x-stainless-timeout", "x-stainless-async", "x-stainless-read-timeout"})
NEVER_FORWARDED = frozenset({"authorization", "host", "content-length", "content-type", "cookie", "x-api-key",
                             "api-key", "proxy-authorization", "x-request-id", "transfer-encoding", "connection"})
RETURNED = frozenset({"content-type", "cache-control", "content-disposition", "openai-processing-ms",
                      "openai-version", "openai-model"})


def request_headers(raw: list[tuple[bytes, bytes]], upstream_key: str | None, request_id: str,
                    content_type: str | None, forwarded: frozenset[str] = FORWARDED) -> dict[str, str]:
    """Client request headers -> upstream request headers (allow-list `forwarded`; see the module doc)."""
    out: dict[str, str] = {}
    for name_raw, value in raw:
        name = name_raw.decode("latin-1").lower()
        if name in forwarded:
            out[name] = value.decode("latin-1")
    out["accept-encoding"] = "identity"   # the gateway reads usage from the body
    out["x-request-id"] = request_id
    if content_type:
        out["content-type"] = content_type
    if upstream_key:
        out["authorization"] = f"Bearer {upstream_key}"
    return out


def response_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Upstream response headers -> client response headers (allow-list)."""
    return {name.lower(): value for name, value in pairs if name.lower() in RETURNED}
