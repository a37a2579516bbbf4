"""Relays an upstream response to the client: whole bodies, or SSE streams event by event."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from gateway.sse import SSESplitter, event_json
from gateway.upstream import UpstreamResponse
from gateway.usage import TokenCounts, parse_usage

BROKEN_STREAM = (b'event: error\ndata: {"error": {"message": "The upstream broke off the stream; the answer is '
                 b'incomplete.", "type": "api_error", "param": null, "code": "upstream_error"}}\n\n')
Finish = Callable[[str, TokenCounts | None, bool], None]   # (outcome, tokens, served) -> settle


def usage_field(payload: dict[str, Any]) -> Any:
    """The `usage` object of a response body or stream event: top level (chat, completions, embeddings, images,
    audio) or inside `response` (the Responses API's body-less events: response.completed, .incomplete, .failed)."""
    usage = payload.get("usage")
    if usage is None and isinstance(payload.get("response"), dict):
        usage = payload["response"].get("usage")
    return usage


def body_usage(body: bytes) -> TokenCounts | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parse_usage(usage_field(payload)) if isinstance(payload, dict) else None


def _has_data(event: bytes) -> bool:
    return event.startswith(b"data:") or b"\ndata:" in event


def _is_usage_event(event: bytes) -> bool:
    return b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event


async def relay_sse(response: UpstreamResponse, strip_usage_chunk: bool,
                    finish: Finish) -> AsyncGenerator[bytes, None]:
    """Yields complete SSE events as they arrive; reads usage from the final chunk.

    `strip_usage_chunk`: the gateway asked for usage on the client's behalf, so the usage-only chunk
    (empty `choices`) is not shown to a client that did not ask for it.
    """
    splitter = SSESplitter()
    tokens: TokenCounts | None = None
    outcome = "client_cancel"
    relayed = False        # an event of the answer (a `data:` line, not a comment such as ": keep-alive") was sent
    try:
        async for chunk in response.chunks():
            out = []
            for event in splitter.feed(chunk):
                if _is_usage_event(event):
                    payload = event_json(event)
                    if payload is not None:
                        tokens = parse_usage(usage_field(payload)) or tokens
                        if strip_usage_chunk and not payload.get("choices"):
                            continue
                out.append(event)
            if out:
                relayed = relayed or any(_has_data(event) for event in out)
                yield b"".join(out)
        rest = splitter.rest()
        if rest:
            yield rest
        outcome = "ok" if response.complete else "upstream_error"
    except OSError:            # TimeoutError, the upstream gone (UpstreamBroken, resets)
        outcome = "upstream_error"
    finally:
        response.close()   # aborts the upstream request when the client went away
        # broken off by the upstream before any event of the answer reached the client: not served; a client that
        # went away (or a stop) after the upstream's 200 is billed as the policy says
        finish(outcome, tokens, relayed or outcome != "upstream_error")
    if outcome == "upstream_error":
        yield BROKEN_STREAM   # tell the client the answer is incomplete (the openai SDK raises APIError)


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def json_error_message(body: bytes) -> Any:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error.get("message") if isinstance(error, dict) else None
