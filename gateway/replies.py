"""The answers of the `/v1` routes and how they are sent over raw ASGI (no Request or Response objects).

A whole answer is two ASGI messages with a `content-length`. A stream is sent chunk by chunk while a watcher
waits for the client to go away: then the stream is cancelled at once (its upstream request closed and its
settle run by the relay), as Starlette's StreamingResponse did, instead of relaying to nobody until the upstream
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from starlette.types import Receive, Send

from gateway.errors import GatewayError
from gateway.headers import JSON_TYPE, raw

Headers = list[tuple[bytes, bytes]]
STOPPING_EVENT = (b'event: error\ndata: {"error": {"message": "The gateway is stopping; the answer is incomplete. '
                  b'Retry it.", "type": "api_error", "param": null, "code": "gateway_stopping"}}\n\n')


@dataclass(slots=True)
class Reply:
    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = None     # set: the body is sent as it comes (chunked)
    abandon: Callable[[], None] | None = None    # a stream never iterated (closing it runs none of its code)


def error_reply(exc: GatewayError) -> Reply:
    return Reply(exc.status, [JSON_TYPE, *raw(exc.headers)] if exc.headers else [JSON_TYPE], exc.body())


async def send_reply(reply: Reply, receive: Receive, send: Send) -> None:
    if reply.stream is None:
        reply.headers.append((b"content-length", b"%d" % len(reply.body)))
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})
        return
    await _send_stream(reply, reply.stream, receive, send)


class _Watch:
    __slots__ = ("gone", "streaming")

    def __init__(self) -> None:
        self.streaming = True
        self.gone = False


async def _watch_disconnect(receive: Receive, task: asyncio.Task[object], watch: _Watch) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if watch.streaming:
        watch.gone = True
        task.cancel()


async def _send_stream(reply: Reply, stream: AsyncGenerator[bytes, None], receive: Receive, send: Send) -> None:
    """Cancelled because the client went away: nothing more is sent. Cancelled because the server is stopping (its
    grace period over): the stream ends with an error event, `gateway_stopping`, instead of breaking off."""
    task = asyncio.current_task()
    assert task is not None
    watch = _Watch()
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, watch))
    started = False
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        started = True
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        watch.streaming = False
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        task.uncancel()                # the client went away, or the server is stopping: ended here, either way
        watch.streaming = False
        if not watch.gone:             # the server stopping: the client is told (a send to a client gone is a no-op)
            with contextlib.suppress(OSError):
                if started:
                    await send({"type": "http.response.body", "body": STOPPING_EVENT})
                else:
                    stopping = error_reply(GatewayError("The gateway is stopping; the request was not completed. "
                                                        "Retry it.", code="gateway_stopping",
                                                        headers={"retry-after": "1"}))
                    await send({"type": "http.response.start", "status": 503, "headers": stopping.headers})
                    await send({"type": "http.response.body", "body": stopping.body})
    finally:
        watch.streaming = False
        watcher.cancel()
        if not started and reply.abandon is not None:
            reply.abandon()            # the relay never ran: its upstream request is closed and settled here
        with contextlib.suppress(Exception):
            await stream.aclose()      # runs the relay's clean-up (upstream closed, settle) if it did not end
