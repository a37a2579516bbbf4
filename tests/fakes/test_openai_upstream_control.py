"""Wire format details and the X-Fake-* behaviour headers, mostly over raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import urllib.request

import aiohttp
import openai
import pytest

from fakes.openai_upstream import FakeUpstream
from tests.fakes.support import API_KEY, MESSAGES, http


def test_raw_sse_wire_format(url: str) -> None:
    request = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(
            {
                "model": "gpt-3.5-turbo-instruct",
                "prompt": "a b c",
                "max_tokens": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert [c["choices"][0]["text"] for c in payloads[:2]] == ["lorem", " ipsum"]
    assert payloads[2]["choices"][0]["finish_reason"] == "length"
    assert payloads[3]["choices"] == []
    assert payloads[3]["usage"]["prompt_tokens"] == 3
    assert payloads[3]["usage"]["completion_tokens"] == 2


def test_usage_overrides(client: openai.OpenAI, url: str) -> None:
    none = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"X-Fake-Usage": "none"}
    )
    assert none.usage is None
    forced = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"X-Fake-Usage": "-5,99999999999"}
    )
    assert forced.usage is not None
    assert (forced.usage.prompt_tokens, forced.usage.completion_tokens) == (-5, 99999999999)
    assert forced.usage.total_tokens == 99999999994
    body = {"model": "gpt-4o", "messages": MESSAGES}
    status, body = http(url + "/v1/chat/completions", "POST", body, {"X-Fake-Usage": f"1,{2**70},3"})
    assert (
        status == 200 and body["usage"]["completion_tokens"] == 2**70 and body["usage"]["total_tokens"] == 3
    )


def test_bad_requests(url: str) -> None:
    status, body = http(url + "/v1/chat/completions", "POST", {"model": "gpt-4o", "messages": []})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = http(
        url + "/v1/chat/completions", "POST", {"model": "x", "messages": MESSAGES, "max_tokens": 0}
    )
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = http(url + "/v1/models", headers={"X-Fake-Latency-Ms": "soon"})
    assert status == 400 and body["error"]["code"] == "fake_bad_control_header"


def test_latency_header_delays_answer(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    client.models.list(extra_headers={"X-Fake-Latency-Ms": "100"})
    assert time.perf_counter() - started >= 0.1


def test_hang_times_out_client(url: str) -> None:
    with (
        openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=0.2) as sdk,
        pytest.raises(openai.APITimeoutError),
    ):
        sdk.models.list(extra_headers={"X-Fake-Hang": "1"})


def test_drop_mid_stream(client: openai.OpenAI, fake: FakeUpstream) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Fake-Chunks": "6", "X-Fake-Drop": "mid-stream"},
    )
    received: list[str | None] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    stream.close()
    assert received == ["lorem", " ipsum", " dolor"]
    assert fake.stats()["streams_completed"] == 0


async def test_client_disconnect_counted_as_cancelled(url: str, fake: FakeUpstream) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Fake-Chunks": "100", "X-Fake-Chunk-Delay-Ms": "20"}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(url + "/v1/chat/completions", json=body, headers=headers)
        first = await response.content.readline()
        assert first.startswith(b"data: {")
        response.close()  # drops the connection mid-stream
    deadline = time.monotonic() + 3
    while fake.stats()["streams_cancelled"] == 0:
        assert time.monotonic() < deadline, fake.stats()
        await asyncio.sleep(0.01)
    assert fake.stats() == {
        "requests": 1,
        "streams_started": 1,
        "streams_completed": 0,
        "streams_cancelled": 1,
    }


def test_embeddings_base64(url: str) -> None:
    status, body = http(
        url + "/v1/embeddings",
        "POST",
        {"model": "e", "input": "hi", "encoding_format": "base64", "dimensions": 4},
    )
    assert status == 200
    decoded = struct.unpack("<4f", base64.b64decode(body["data"][0]["embedding"]))
    assert all(-1.0 <= x <= 1.0 for x in decoded)
