"""Request recording (raw path, query, multipart bodies), the echo of unknown paths, auth errors, n/best_of."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from fakes.openai_upstream import DEFAULT_MODELS, FakeUpstream
from tests.fakes.support import LOREM_16, MESSAGES, PROMPT_TOKENS, http, multipart_http, raw_http


def test_recording_keeps_raw_path_and_query(url: str, fake: FakeUpstream) -> None:
    status, body = http(url + "/v1/files/a%2Fb/content?limit=2&after=x%20y", "GET")
    assert status == 200
    assert body == {
        "object": "echo",
        "path": "/v1/files/a/b/content",
        "method": "GET",
        "raw_path": "/v1/files/a%2Fb/content",
    }
    [seen] = fake.requests()
    assert seen["path"] == "/v1/files/a/b/content"
    assert seen["raw_path"] == "/v1/files/a%2Fb/content"
    assert seen["query"] == "limit=2&after=x%20y"
    assert seen["body"] is None
    http(url + "/v1/models")
    assert fake.requests()[-1]["raw_path"] == "/v1/models" and fake.requests()[-1]["query"] == ""
    _, recorded = http(url + "/_fake/requests")
    assert recorded[0]["raw_path"] == "/v1/files/a%2Fb/content"


def test_recording_of_multipart_bodies(url: str, fake: FakeUpstream) -> None:
    fields: list[tuple[str, str | tuple[str, bytes]]] = [
        ("model", "gpt-image-1"),
        ("prompt", "put a hat on it"),
        ("image[]", ("cat.png", b"\x89PNG" + b"x" * 96)),
        ("image[]", ("dog.png", b"y" * 10)),
        ("n", "2"),
    ]
    status, body = multipart_http(url + "/v1/images/edits?debug=1", fields)
    assert status == 200 and len(body["data"]) == 2
    [seen] = fake.requests()
    assert seen["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert seen["query"] == "debug=1"
    assert seen["body"] == {
        "model": "gpt-image-1",
        "prompt": "put a hat on it",
        "image[]": [{"filename": "cat.png", "size": 100}, {"filename": "dog.png", "size": 10}],
        "n": "2",
    }


def test_malformed_multipart_is_recorded_as_none(url: str, fake: FakeUpstream) -> None:
    status, _, raw = raw_http(
        url + "/v1/audio/transcriptions", data=b"not multipart", headers={"Content-Type": "multipart/form-data"}
    )
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert fake.requests()[-1]["body"] is None


def test_json_bodies_still_parsed(client: openai.OpenAI, fake: FakeUpstream) -> None:
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [seen] = fake.requests()
    assert seen["body"]["messages"] == MESSAGES
    assert seen["headers"]["content-type"] == "application/json"


def test_wrong_key_is_echoed_masked_like_openai(url: str) -> None:
    presented = "sk-abcdefghijklmnopqrstuvwxyz0123wxyz"
    with (
        openai.OpenAI(base_url=url + "/v1", api_key=presented, max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        bad.models.list()
    expected = (
        "Incorrect API key provided: sk-abc" + "*" * (len(presented) - 10) + "wxyz. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert expected in str(info.value)
    body: Any = info.value.body
    assert body["message"] == expected and body["code"] == "invalid_api_key"
    assert "ghijklmnop" not in body["message"]
    status, short = http(url + "/v1/models", headers={"Authorization": "Bearer sk-short"})
    assert status == 401 and short["error"]["message"].startswith("Incorrect API key provided: sk-*****.")


@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Basic Zm9vOmJhcg=="])
def test_missing_key_message_kept(url: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    request = urllib.request.Request(url + "/v1/models", headers=headers)
    try:
        urllib.request.urlopen(request, timeout=5).close()
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as err:
        with err:
            assert err.code == 401
            error = json.loads(err.read())["error"]
    assert error["message"].startswith("You didn't provide an API key.")
    assert error["code"] == "invalid_api_key"


def test_default_models_include_media_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == list(DEFAULT_MODELS)
    for model in ("gpt-image-1", "dall-e-3", "whisper-1", "gpt-4o-transcribe", "tts-1", "omni-moderation-latest"):
        assert model in ids


# -- chat n ----------------------------------------------------------------------------------------------------
def test_chat_n_choices_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == LOREM_16 for c in completion.choices)
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 48, 62)
    reasoning = client.chat.completions.create(model="o3-mini", messages=MESSAGES, n=2, max_completion_tokens=2)
    assert reasoning.usage is not None and reasoning.usage.completion_tokens_details is not None
    assert reasoning.usage.completion_tokens == 2 * (2 + 4)
    assert reasoning.usage.completion_tokens_details.reasoning_tokens == 8


def test_chat_n_streaming_carries_choice_index(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Fake-Chunks": "3"},
    )
    chunks = list(stream)
    texts = {0: "", 1: ""}
    finishes: dict[int, str | None] = {}
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    assert texts == {0: "lorem ipsum dolor", 1: "lorem ipsum dolor"}
    assert finishes == {0: "stop", 1: "stop"}
    assert len(chunks) == 3 * 2 + 2 + 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


@pytest.mark.parametrize("n", [0, 129, "2", True])
def test_chat_bad_n(url: str, n: object) -> None:
    status, body = http(url + "/v1/chat/completions", "POST", {"model": "gpt-4o", "messages": MESSAGES, "n": n})
    assert status == 400 and body["error"]["param"] == "n"


# -- legacy completions: prompts x n, best_of -------------------------------------------------------------------
def test_completions_prompt_list_times_n(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["one two", "three four five"], n=2, max_tokens=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert all(c.text == "lorem ipsum dolor" and c.finish_reason == "length" for c in completion.choices)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 2 * 2 * 3)


def test_completions_token_arrays_and_best_of(client: openai.OpenAI) -> None:
    single = client.completions.create(model="m", prompt=[1, 2, 3, 4], max_tokens=2, best_of=3)
    assert len(single.choices) == 1
    assert single.usage is not None and (single.usage.prompt_tokens, single.usage.completion_tokens) == (4, 6)
    many = client.completions.create(model="m", prompt=[[1, 2], [3]], max_tokens=2, n=2, best_of=5)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.usage is not None and (many.usage.prompt_tokens, many.usage.completion_tokens) == (3, 2 * 5 * 2)


def test_completions_streaming_prompts_times_n(url: str) -> None:
    body = {
        "model": "m",
        "prompt": ["a", "b c"],
        "n": 2,
        "best_of": 3,
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, raw = raw_http(
        url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    texts: dict[int, str] = {}
    for chunk in payloads[:-1]:
        [choice] = chunk["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {i: "lorem ipsum" for i in range(4)}
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["prompt_tokens"] == 3
    assert payloads[-1]["usage"]["completion_tokens"] == 2 * 3 * 2


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"best_of": 21}, "best_of"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": {"text": "a"}}, "prompt"),
    ],
)
def test_completions_bad_prompt_n_best_of(url: str, extra: dict[str, object], param: str) -> None:
    status, body = http(url + "/v1/completions", "POST", {"model": "m", "prompt": "x", **extra})
    assert status == 400 and body["error"]["param"] == param
