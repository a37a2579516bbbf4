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
    """Pre-rendered frames: `head` at once, one `content` frame per generated word (and choice), then the
    `tail` (finish/usage/[DONE], or the Responses API's closing events) sent together."""

    content: list[bytes] = field(default_factory=list)
    tail: list[bytes] = field(default_factory=list)
    head: list[bytes] = field(default_factory=list)


def frame(obj: JSON) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def event_frame(event: str, obj: JSON) -> bytes:
    """A named SSE event (the Responses API sends `event: <type>` before each `data:` line)."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def _finish_tail(base: JSON, last_choices: list[JSON], usage: JSON | None, extra: JSON) -> list[bytes]:
    tail = [frame({**base, "choices": [last], **extra}) for last in last_choices]
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
    choices: int = 1,
) -> StreamPlan:
    """chat.completion.chunk events, one per word and choice (each chunk carries one choice, by index);
    usage is only sent when include_usage (and usage is not None)."""
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
        for index in range(choices):
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            plan.content.append(frame({**base, "choices": [choice], **extra}))
    last_delta: JSON = {} if words else {"role": "assistant", "content": ""}
    last = [
        {"index": index, "delta": last_delta, "logprobs": None, "finish_reason": finish_reason}
        for index in range(choices)
    ]
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
    choices: int = 1,
) -> StreamPlan:
    """Legacy text_completion stream events, one per word and choice (index = prompt * n + j)."""
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
        text = word if i == 0 else " " + word
        for index in range(choices):
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
            plan.content.append(frame({**base, "choices": [choice], **extra}))
    last = [{"index": index, "text": "", "logprobs": None, "finish_reason": finish_reason} for index in range(choices)]
    plan.tail = _finish_tail(base, last, usage if include_usage else None, extra)
    return plan


def responses_stream_plan(in_progress: JSON, final: JSON, words: list[str]) -> StreamPlan:
    """Responses API events, each `event: <type>` + `data: {"type", "sequence_number", ...}`:
    response.created, response.in_progress, response.output_item.added, response.content_part.added (head),
    one response.output_text.delta per word (content), then response.output_text.done,
    response.content_part.done, response.output_item.done and response.completed (or response.incomplete
    when the output was cut by max_output_tokens), whose `response` carries the usage (tail). No [DONE]."""
    sequence = iter(range(1_000_000))

    def event(event_type: str, **fields: object) -> bytes:
        return event_frame(event_type, {"type": event_type, "sequence_number": next(sequence), **fields})

    [final_item] = final["output"]
    item_id = final_item["id"]
    [final_part] = final_item["content"]
    open_item = {**final_item, "status": "in_progress", "content": []}
    open_part = {**final_part, "text": ""}
    where: JSON = {"item_id": item_id, "output_index": 0, "content_index": 0}
    plan = StreamPlan()
    plan.head = [
        event("response.created", response=in_progress),
        event("response.in_progress", response=in_progress),
        event("response.output_item.added", output_index=0, item=open_item),
        event("response.content_part.added", **where, part=open_part),
    ]
    for i, word in enumerate(words):
        plan.content.append(
            event("response.output_text.delta", **where, delta=word if i == 0 else " " + word, logprobs=[])
        )
    closing = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    plan.tail = [
        event("response.output_text.done", **where, text=final_part["text"], logprobs=[]),
        event("response.content_part.done", **where, part=final_part),
        event("response.output_item.done", output_index=0, item=final_item),
        event(closing, response=final),
    ]
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
        if plan.head:
            await response.write(b"".join(plan.head))
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
