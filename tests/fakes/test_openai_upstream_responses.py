"""POST /v1/responses: the response object, the SSE event sequence, and the X-Fake-* headers."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from fakes.openai_upstream import FakeUpstream
from tests.fakes.support import LOREM_16, http, raw_http, wait_for

INPUT_ITEMS: list[Any] = [
    {"role": "developer", "content": "Be terse."},  # 2 words + 3
    {"role": "user", "content": [{"type": "input_text", "text": "Say hello to the world"}]},  # 5 words + 3
]
INPUT_TOKENS = 13
STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING_EVENTS = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        events.append((data["type"], data))
    return events


def post_stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    status, response_headers, raw = raw_http(
        url + "/v1/responses",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    assert status == 200 and response_headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in raw
    return sse_events(raw)


def test_response_object(client: openai.OpenAI, fake: FakeUpstream) -> None:
    response = client.responses.create(model="gpt-4o-mini", input="Say hello to the world")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "gpt-4o-mini"
    assert abs(response.created_at - time.time()) < 5
    [item] = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_")
    [part] = item.content
    assert part.type == "output_text" and part.text == LOREM_16
    assert response.output_text == LOREM_16
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5 + 3, 16, 24)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert fake.requests()[-1]["body"]["input"] == "Say hello to the world"
    assert fake.stats()["streams_started"] == 0


def test_response_input_items_instructions_reasoning_cached(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="o3-mini",
        input=INPUT_ITEMS,
        instructions="You are kind",  # 3 words + 3
        extra_headers={"X-Fake-Cached-Tokens": "4"},
    )
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == INPUT_TOKENS + 6
    assert usage.input_tokens_details.cached_tokens == 4
    assert usage.output_tokens_details.reasoning_tokens == 4
    assert usage.output_tokens == 16 + 4 and usage.total_tokens == INPUT_TOKENS + 6 + 20
    assert response.instructions == "You are kind"


def test_response_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o", input="hi", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "lorem ipsum dolor"
    assert response.max_output_tokens == 3
    assert response.usage is not None and response.usage.output_tokens == 3


def test_response_stream_with_sdk(client: openai.OpenAI, fake: FakeUpstream) -> None:
    with client.responses.stream(model="gpt-4o-mini", input=INPUT_ITEMS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types == STREAM_EVENTS + ["response.output_text.delta"] * 16 + CLOSING_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == LOREM_16
    assert final.output_text == LOREM_16 and final.status == "completed"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (INPUT_TOKENS, 16)
    wait_for(lambda: fake.stats()["streams_completed"] == 1)


def test_response_stream_wire_format(url: str) -> None:
    events = post_stream(url, {"model": "gpt-4o-mini", "input": "hi"}, {"X-Fake-Chunks": "2"})
    types = [t for t, _ in events]
    assert types == STREAM_EVENTS + ["response.output_text.delta"] * 2 + CLOSING_EVENTS
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    added = events[2][1]
    assert added["output_index"] == 0 and added["item"]["status"] == "in_progress" and added["item"]["content"] == []
    item_id = added["item"]["id"]
    part_added = events[3][1]
    assert (part_added["item_id"], part_added["content_index"]) == (item_id, 0)
    assert part_added["part"] == {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    assert [d["delta"] for t, d in events if t == "response.output_text.delta"] == ["lorem", " ipsum"]
    assert all(d["item_id"] == item_id for _, d in events[2:-1] if "item_id" in d)
    assert events[-4][1]["text"] == "lorem ipsum"
    assert events[-2][1]["item"]["status"] == "completed"
    completed = events[-1][1]["response"]
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == "lorem ipsum"
    assert completed["usage"] == {
        "input_tokens": 4,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 6,
    }


def test_response_stream_incomplete_on_max_output_tokens(url: str) -> None:
    events = post_stream(url, {"model": "gpt-4o", "input": "hi", "max_output_tokens": 2})
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 2


@pytest.mark.parametrize(
    ("usage_header", "expected"),
    [
        ("none", None),
        ("7,9", {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}),
        ("7,9,1", {"input_tokens": 7, "output_tokens": 9, "total_tokens": 1}),
    ],
)
def test_response_usage_header(url: str, usage_header: str, expected: dict[str, int] | None) -> None:
    headers = {"X-Fake-Usage": usage_header}
    status, body = http(url + "/v1/responses", "POST", {"model": "gpt-4o", "input": "hi"}, headers)
    assert status == 200
    streamed = post_stream(url, {"model": "gpt-4o", "input": "hi"}, headers)[-1][1]["response"]
    for usage in (body["usage"], streamed["usage"]):
        if expected is None:
            assert usage is None
        else:
            assert {k: usage[k] for k in expected} == expected


def test_response_stream_drop_mid_stream(client: openai.OpenAI, fake: FakeUpstream) -> None:
    stream = client.responses.create(
        model="gpt-4o-mini",
        input="hi",
        stream=True,
        extra_headers={"X-Fake-Chunks": "6", "X-Fake-Drop": "mid-stream"},
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for event in stream:
            received.append(event.type)
    stream.close()
    assert received == STREAM_EVENTS + ["response.output_text.delta"] * 3
    assert fake.stats()["streams_completed"] == 0


def test_response_stream_chunk_delay_and_latency(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    stream = client.responses.create(
        model="gpt-4o-mini",
        input="hi",
        stream=True,
        extra_headers={"X-Fake-Chunks": "3", "X-Fake-Chunk-Delay-Ms": "40", "X-Fake-Latency-Ms": "30"},
    )
    assert [e.type for e in stream][-1] == "response.completed"
    assert time.perf_counter() - started >= 0.03 + 3 * 0.04


def test_response_forced_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o", input="hi", extra_headers={"X-Fake-Status": "429"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "gpt-4o"}, "input"),
        ({"model": "gpt-4o", "input": []}, "input"),
        ({"model": "gpt-4o", "input": 5}, "input"),
        ({"model": "gpt-4o", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_response_bad_requests(url: str, body: dict[str, Any], param: str) -> None:
    status, answer = http(url + "/v1/responses", "POST", body)
    assert status == 400
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"
