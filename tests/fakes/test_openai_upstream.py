"""The fake OpenAI upstream driven by the official openai SDK (sync and async)."""

from __future__ import annotations

import openai
import pytest

from fakes.openai_upstream import DEFAULT_MODELS, FakeUpstream, spawn_process, stop_process
from tests.fakes.support import API_KEY, LOREM_16, MESSAGES, PROMPT_TOKENS, http, wait_for


def test_chat_non_streaming_has_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == LOREM_16
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 16, 30)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert fake.stats() == {
        "requests": 1,
        "streams_started": 0,
        "streams_completed": 0,
        "streams_cancelled": 0,
    }


def test_chat_limits_reasoning_and_cached_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="o3-mini",
        messages=MESSAGES,
        max_completion_tokens=5,
        extra_headers={"X-Fake-Cached-Tokens": "7"},
    )
    assert completion.choices[0].message.content == "lorem ipsum dolor sit amet"
    assert completion.choices[0].finish_reason == "length"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 9, 23)
    assert usage.prompt_tokens_details.cached_tokens == 7
    assert usage.completion_tokens_details.reasoning_tokens == 4


def test_chat_stream_with_include_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert len(chunks) == 16 + 2  # one per word, the finish chunk, the usage chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == LOREM_16
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 16)
    wait_for(lambda: fake.stats()["streams_completed"] == 1)
    assert fake.stats()["streams_started"] == 1


def test_chat_stream_without_include_usage_and_forced_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"X-Fake-Chunks": "3"}
    )
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks] == ["lorem", " ipsum", " dolor", None]
    assert all(c.usage is None and c.choices for c in chunks)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_forced_status_maps_to_sdk_errors(
    client: openai.OpenAI, status: int, error_class: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_class) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Fake-Status": str(status)}
        )
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and isinstance(info.value.body["message"], str)


def test_auth_failure(url: str) -> None:
    with (
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        bad.models.list()
    assert info.value.code == "invalid_api_key"
    status, body = http(url + "/v1/models", headers={"Authorization": ""})
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_api_key"


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(
        model="text-embedding-3-small", input=["hello world", "hi", "hello world"]
    )
    assert result.object == "list"
    assert [e.index for e in result.data] == [0, 1, 2]
    vectors = [e.embedding for e in result.data]
    assert all(len(v) == 8 and all(-1.0 <= x <= 1.0 for x in v) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (5, 5)
    single = client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert single.data[0].embedding == vectors[1]


def test_models_echo_and_introspection(client: openai.OpenAI, url: str, fake: FakeUpstream) -> None:
    assert [m.id for m in client.models.list()] == list(DEFAULT_MODELS)
    assert http(url + "/v1/files/file-1?purpose=x", "DELETE") == (
        200,
        {"object": "echo", "path": "/v1/files/file-1", "method": "DELETE", "raw_path": "/v1/files/file-1"},
    )
    status, recorded = http(url + "/_fake/requests")
    assert status == 200
    assert [(r["method"], r["path"]) for r in recorded] == [
        ("GET", "/v1/models"),
        ("DELETE", "/v1/files/file-1"),
    ]
    assert recorded[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert recorded[0]["body"] is None
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert fake.requests()[-1]["body"]["model"] == "gpt-4o"
    assert http(url + "/_fake/stats")[1]["requests"] == 3
    assert http(url + "/_fake/reset", "POST") == (200, {"ok": True})
    assert http(url + "/_fake/requests") == (200, [])
    assert http(url + "/_fake/stats")[1] == {
        "requests": 0,
        "streams_started": 0,
        "streams_completed": 0,
        "streams_cancelled": 0,
    }


async def test_runs_in_callers_event_loop() -> None:
    upstream = FakeUpstream(models=["m1", "m2"], latency_ms=1)
    url = await upstream.start()
    try:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="anything", max_retries=0) as sdk:
            assert [m.id async for m in sdk.models.list()] == ["m1", "m2"]
            completion = await sdk.completions.create(model="m1", prompt="one two", max_tokens=3)
            assert completion.choices[0].text == "lorem ipsum dolor"
            assert completion.usage is not None and completion.usage.total_tokens == 5
    finally:
        await upstream.aclose()


def test_spawn_process() -> None:
    proc, url = spawn_process(0, "sk-proc", models=["only-model"])
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key="sk-proc", max_retries=0) as sdk:
            assert [m.id for m in sdk.models.list()] == ["only-model"]
    finally:
        stop_process(proc)
    assert proc.returncode == 0
