"""Server-sent-event framing for streamed completions and the send loop that counts outcomes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from fakes.openai_upstream.payloads import JSON, dumps

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
DONE_FRAME = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Stats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
        }

    def reset(self) -> None:
        self.requests = self.streams_started = self.streams_completed = self.streams_cancelled = 0


@dataclass(slots=True)
class StreamPlan:
    """Pre-rendered frames: one per generated word, then finish/usage/[DONE] sent together."""

    content: list[bytes] = field(default_factory=list)
    tail: list[bytes] = field(default_factory=list)


def frame(obj: JSON) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _finish_tail(base: JSON, last_choice: JSON, usage: JSON | None, extra: JSON) -> list[bytes]:
    tail = [frame({**base, "choices": [last_choice], **extra})]
    if usage is not None:
        tail.append(frame({**base, "choices": [], "usage": usage}))
    tail.append(DONE_FRAME)
    return tail


def chat_stream_plan(
    response_id: str,
    created: int,
    model: str,
    words: list[str],
    finish_reason: str,
    usage: JSON | None,
    include_usage: bool,
) -> StreamPlan:
    """chat.completion.chunk events; usage is only sent when include_usage (and usage is not None)."""
    base: JSON = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    extra: JSON = {"usage": None} if include_usage else {}
    plan = StreamPlan()
    for i, word in enumerate(words):
        delta: JSON = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        plan.content.append(frame({**base, "choices": [choice], **extra}))
    last_delta: JSON = {} if words else {"role": "assistant", "content": ""}
    last = {"index": 0, "delta": last_delta, "logprobs": None, "finish_reason": finish_reason}
    plan.tail = _finish_tail(base, last, usage if include_usage else None, extra)
    return plan


def text_stream_plan(
    response_id: str,
    created: int,
    model: str,
    words: list[str],
    finish_reason: str,
    usage: JSON | None,
    include_usage: bool,
) -> StreamPlan:
    """Legacy text_completion stream events."""
    base: JSON = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    extra: JSON = {"usage": None} if include_usage else {}
    plan = StreamPlan()
    for i, word in enumerate(words):
        choice = {"index": 0, "text": word if i == 0 else " " + word, "logprobs": None, "finish_reason": None}
        plan.content.append(frame({**base, "choices": [choice], **extra}))
    last = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
    plan.tail = _finish_tail(base, last, usage if include_usage else None, extra)
    return plan


def _drop_connection(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN: no terminating chunk, no [DONE]


async def send_stream(
    request: web.BaseRequest, plan: StreamPlan, chunk_delay_s: float, drop_mid_stream: bool, stats: Stats
) -> web.StreamResponse:
    """Write each frame as soon as it is due; count completed and client-cancelled streams."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    stats.streams_started += 1
    frames = plan.content[: len(plan.content) // 2] if drop_mid_stream else plan.content
    try:
        await response.prepare(request)
        for i, data in enumerate(frames):
            if i and chunk_delay_s > 0:
                await asyncio.sleep(chunk_delay_s)
            await response.write(data)
        if drop_mid_stream:
            _drop_connection(request)
            return response
        if frames and chunk_delay_s > 0:
            await asyncio.sleep(chunk_delay_s)
        await response.write(b"".join(plan.tail))
        await response.write_eof()
    except asyncio.CancelledError:
        stats.streams_cancelled += 1  # client went away while we slept (handler cancellation)
        raise
    except ConnectionResetError:
        stats.streams_cancelled += 1  # client went away while we wrote
        return response
    stats.streams_completed += 1
    return response
