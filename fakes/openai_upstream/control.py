"""Per-request behaviour switches (X-Fake-* headers) and OpenAI-style error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from fakes.openai_upstream.payloads import dumps

H_STATUS = "X-Fake-Status"
H_LATENCY = "X-Fake-Latency-Ms"
H_CHUNK_DELAY = "X-Fake-Chunk-Delay-Ms"
H_CHUNKS = "X-Fake-Chunks"
H_USAGE = "X-Fake-Usage"
H_CACHED = "X-Fake-Cached-Tokens"
H_DROP = "X-Fake-Drop"
H_HANG = "X-Fake-Hang"


class BadControlHeader(ValueError):
    """An X-Fake-* header has a value this fake does not understand (answered with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    status: int | None = None
    latency_ms: float | None = None
    chunk_delay_ms: float | None = None
    chunks: int | None = None
    omit_usage: bool = False
    forced_usage: tuple[int, int, int | None] | None = None
    cached_tokens: int = 0
    drop_mid_stream: bool = False
    hang: bool = False


DEFAULT_BEHAVIOUR = Behaviour()


def _int(name: str, value: str, minimum: int | None = None) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise BadControlHeader(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise BadControlHeader(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return number


def _ms(name: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise BadControlHeader(f"{name}: expected milliseconds, got {value!r}") from None
    if not number >= 0:
        raise BadControlHeader(f"{name}: expected milliseconds >= 0, got {value!r}")
    return number


def _usage(value: str) -> tuple[bool, tuple[int, int, int | None] | None]:
    text = value.strip().lower()
    if text == "none":
        return True, None
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise BadControlHeader(
            f"{H_USAGE}: expected 'none' or '<prompt>,<completion>[,<total>]', got {value!r}"
        )
    numbers = [_int(H_USAGE, p) for p in parts]
    return False, (numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)


def parse_behaviour(headers: Mapping[str, str]) -> Behaviour:
    """Read the X-Fake-* headers; the common no-header case costs a few dict lookups."""
    status = headers.get(H_STATUS)
    latency = headers.get(H_LATENCY)
    chunk_delay = headers.get(H_CHUNK_DELAY)
    chunks = headers.get(H_CHUNKS)
    usage = headers.get(H_USAGE)
    cached = headers.get(H_CACHED)
    drop = headers.get(H_DROP)
    hang = headers.get(H_HANG)
    if not (status or latency or chunk_delay or chunks or usage or cached or drop or hang):
        return DEFAULT_BEHAVIOUR
    if drop is not None and drop.strip().lower() not in ("mid-stream", ""):
        raise BadControlHeader(f"{H_DROP}: only 'mid-stream' is supported, got {drop!r}")
    omit_usage, forced_usage = _usage(usage) if usage else (False, None)
    status_code = _int(H_STATUS, status) if status else None
    if status_code is not None and not 400 <= status_code <= 599:
        raise BadControlHeader(f"{H_STATUS}: expected an error status in [400, 599], got {status!r}")
    return Behaviour(
        status=status_code,
        latency_ms=_ms(H_LATENCY, latency) if latency else None,
        chunk_delay_ms=_ms(H_CHUNK_DELAY, chunk_delay) if chunk_delay else None,
        chunks=_int(H_CHUNKS, chunks, minimum=0) if chunks else None,
        omit_usage=omit_usage,
        forced_usage=forced_usage,
        cached_tokens=_int(H_CACHED, cached) if cached else 0,
        drop_mid_stream=drop is not None and drop.strip().lower() == "mid-stream",
        hang=hang is not None and hang.strip().lower() not in ("", "0", "false", "no"),
    )


# status -> (message, type, code), modelled on what api.openai.com answers.
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Fake upstream: bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", "unsupported_country"),
    404: ("The requested resource does not exist.", "invalid_request_error", "not_found"),
    409: ("Conflict with the current state of the resource.", "invalid_request_error", None),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: ("Rate limit reached for requests (fake upstream).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def error_response(
    status: int,
    message: str | None = None,
    *,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    default_message, default_type, default_code = _ERRORS.get(
        status,
        (f"Fake upstream error (HTTP {status}).", "server_error" if status >= 500 else "api_error", None),
    )
    body = {
        "error": {
            "message": message or default_message,
            "type": error_type or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return web.Response(status=status, body=dumps(body), content_type="application/json")
