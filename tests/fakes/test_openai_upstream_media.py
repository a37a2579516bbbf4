"""Images, audio and moderations endpoints, driven by the openai SDK where it has no deprecation warning."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest

from fakes.openai_upstream import FakeUpstream
from tests.fakes.support import LOREM_16, http, multipart_http, raw_http

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- images ---------------------------------------------------------------------------------------------------
def test_images_generate_gpt_image_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    result = client.images.generate(model="gpt-image-1", prompt="a cat in a hat", n=2, quality="low")
    assert result.data is not None and len(result.data) == 2
    assert all(item.b64_json and base64.b64decode(item.b64_json).startswith(PNG_SIGNATURE) for item in result.data)
    assert all(item.url is None for item in result.data)
    assert (result.quality, result.size, result.output_format) == ("low", "1024x1024", "png")
    usage = result.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 2 * 272, 5 + 544)
    assert (usage.input_tokens_details.text_tokens, usage.input_tokens_details.image_tokens) == (5, 0)
    assert fake.requests()[-1]["body"]["prompt"] == "a cat in a hat"


def test_images_generate_dalle(client: openai.OpenAI) -> None:
    urls = client.images.generate(model="dall-e-3", prompt="a cat", size="1792x1024")
    assert urls.usage is None and urls.data is not None
    [item] = urls.data
    assert item.url is not None and item.url.startswith("https://") and item.revised_prompt == "a cat"
    b64 = client.images.generate(prompt="a dog", n=3, response_format="b64_json")  # dall-e-2 by default
    assert b64.data is not None and len(b64.data) == 3 and all(i.b64_json for i in b64.data)


def test_images_usage_headers(url: str) -> None:
    body = {"model": "gpt-image-1", "prompt": "x"}
    assert "usage" not in http(url + "/v1/images/generations", "POST", body, {"X-Fake-Usage": "none"})[1]
    status, forced = http(url + "/v1/images/generations", "POST", body, {"X-Fake-Usage": "10,20"})
    assert status == 200
    usage = forced["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (10, 20, 30)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-image-1"}, "prompt"),
        ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
    ],
)
def test_images_generate_bad_requests(url: str, body: dict[str, Any], param: str) -> None:
    status, answer = http(url + "/v1/images/generations", "POST", body)
    assert status == 400 and answer["error"]["param"] == param


def test_images_edit_with_sdk(client: openai.OpenAI, fake: FakeUpstream) -> None:
    result = client.images.edit(
        model="gpt-image-1",
        image=[("a.png", PNG_SIGNATURE + b"a" * 50), ("b.png", PNG_SIGNATURE + b"b" * 20)],
        prompt="add a hat",
        size="1536x1024",
    )
    assert result.data is not None and len(result.data) == 1
    usage = result.usage
    assert usage is not None
    assert (usage.input_tokens_details.text_tokens, usage.input_tokens_details.image_tokens) == (3, 2 * 323)
    assert usage.output_tokens == 1584 and usage.total_tokens == 3 + 646 + 1584
    body = fake.requests()[-1]["body"]
    assert body["image[]"] == [{"filename": "a.png", "size": 58}, {"filename": "b.png", "size": 28}]
    assert body["prompt"] == "add a hat" and body["model"] == "gpt-image-1"


def test_images_edit_single_image_and_mask(url: str) -> None:
    status, body = multipart_http(
        url + "/v1/images/edits",
        [("image", ("i.png", b"i")), ("mask", ("m.png", b"m")), ("prompt", "p"), ("n", "2")],
    )
    assert status == 200 and len(body["data"]) == 2 and "url" in body["data"][0] and "usage" not in body


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ([("prompt", "p")], "image"),
        ([("image", ("i.png", b"i"))], "prompt"),
        ([("image", "not a file"), ("prompt", "p")], "image"),
        ([("image", ("i.png", b"i")), ("prompt", "p"), ("n", "zero")], "n"),
    ],
)
def test_images_edit_bad_requests(url: str, fields: list[tuple[str, Any]], param: str) -> None:
    status, body = multipart_http(url + "/v1/images/edits", fields)
    assert status == 400 and body["error"]["param"] == param


def test_images_edit_wants_multipart(url: str) -> None:
    status, body = http(url + "/v1/images/edits", "POST", None)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def test_images_variations(url: str, fake: FakeUpstream) -> None:
    status, body = multipart_http(
        url + "/v1/images/variations",
        [("image", ("v.png", b"v" * 7)), ("n", "2"), ("response_format", "b64_json")],
    )
    assert status == 200
    assert isinstance(body["created"], int) and len(body["data"]) == 2 and body["data"][0]["b64_json"]
    assert fake.requests()[-1]["body"]["image"] == {"filename": "v.png", "size": 7}
    status, body = multipart_http(url + "/v1/images/variations", [("n", "2")])
    assert status == 400 and body["error"]["param"] == "image"


# -- audio ----------------------------------------------------------------------------------------------------
def test_speech_with_sdk(client: openai.OpenAI, fake: FakeUpstream) -> None:
    speech = client.audio.speech.create(model="tts-1", input="Hello there, world", voice="alloy")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    audio = speech.content
    assert audio.startswith(b"ID3") and 200 <= len(audio) <= 1000
    assert fake.requests()[-1]["body"] == {"model": "tts-1", "input": "Hello there, world", "voice": "alloy"}
    wav = client.audio.speech.create(model="tts-1", input="hi", voice="nova", response_format="wav")
    assert wav.response.headers["content-type"] == "audio/wav" and wav.content.startswith(b"RIFF")


@pytest.mark.parametrize("missing", ["model", "input", "voice"])
def test_speech_missing_fields(url: str, missing: str) -> None:
    body = {"model": "tts-1", "input": "hi", "voice": "alloy"}
    del body[missing]
    status, answer = http(url + "/v1/audio/speech", "POST", body)
    assert status == 400 and answer["error"]["param"] == missing


def test_transcription_token_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    result = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("speech.mp3", b"\xff" * 1234), prompt="names: Ada Lovelace"
    )
    assert result.text == LOREM_16
    usage: Any = result.usage
    assert usage is not None and usage.type == "tokens"
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (13 + 3, 16, 32)
    assert (usage.input_token_details.audio_tokens, usage.input_token_details.text_tokens) == (13, 3)
    recorded = fake.requests()[-1]["body"]
    assert recorded["file"] == {"filename": "speech.mp3", "size": 1234}
    assert recorded["model"] == "gpt-4o-transcribe"


def test_transcription_whisper_duration_and_formats(client: openai.OpenAI, url: str) -> None:
    result = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", b"\x00" * 40_000))
    usage: Any = result.usage
    assert usage is not None and (usage.type, usage.seconds) == ("duration", 3)
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("s.wav", b"\x00" * 10), response_format="text"
    )
    assert text.strip() == LOREM_16
    status, verbose = multipart_http(
        url + "/v1/audio/transcriptions",
        [("file", ("s.wav", b"\x00" * 10)), ("model", "whisper-1"), ("response_format", "verbose_json")],
    )
    assert status == 200 and verbose["task"] == "transcribe" and verbose["segments"][0]["text"].strip() == LOREM_16
    status, srt = multipart_http(
        url + "/v1/audio/transcriptions",
        [("file", ("s.wav", b"\x00")), ("model", "whisper-1"), ("response_format", "srt")],
    )
    assert status == 200 and srt.startswith("1\n00:00:00,000 --> ")


def test_transcription_control_headers(url: str) -> None:
    fields: list[tuple[str, Any]] = [("file", ("s.mp3", b"\x01" * 300)), ("model", "gpt-4o-mini-transcribe")]
    status, body = multipart_http(url + "/v1/audio/transcriptions", fields, {"X-Fake-Chunks": "3"})
    assert status == 200 and body["text"] == "lorem ipsum dolor"
    assert body["usage"]["output_tokens"] == 3 and body["usage"]["input_tokens"] == 3
    status, body = multipart_http(url + "/v1/audio/transcriptions", fields, {"X-Fake-Usage": "none"})
    assert status == 200 and "usage" not in body
    status, body = multipart_http(url + "/v1/audio/transcriptions", fields, {"X-Fake-Usage": "5,6,7"})
    assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"], body["usage"]["total_tokens"]) == (5, 6, 7)
    status, body = multipart_http(url + "/v1/audio/transcriptions", fields, {"X-Fake-Status": "503"})
    assert status == 503 and body["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ([("model", "whisper-1")], "file"),
        ([("file", ("s.mp3", b"x"))], "model"),
        ([("file", "text, not a file"), ("model", "whisper-1")], "file"),
        ([("file", ("s.mp3", b"x")), ("model", "gpt-4o-transcribe"), ("response_format", "srt")], "response_format"),
    ],
)
def test_transcription_bad_requests(url: str, fields: list[tuple[str, Any]], param: str) -> None:
    status, body = multipart_http(url + "/v1/audio/transcriptions", fields)
    assert status == 400 and body["error"]["param"] == param


def test_translations(url: str, fake: FakeUpstream) -> None:
    status, body = multipart_http(
        url + "/v1/audio/translations", [("file", ("fr.mp3", b"\x02" * 99)), ("model", "whisper-1")]
    )
    assert (status, body) == (200, {"text": LOREM_16})
    assert fake.requests()[-1]["body"] == {"file": {"filename": "fr.mp3", "size": 99}, "model": "whisper-1"}
    status, body = multipart_http(url + "/v1/audio/translations", [("model", "whisper-1")])
    assert status == 400 and body["error"]["param"] == "file"


# -- moderations ----------------------------------------------------------------------------------------------
def test_moderations_with_sdk(client: openai.OpenAI) -> None:
    result = client.moderations.create(model="omni-moderation-latest", input=["I will kill it", "hello"])
    assert result.id.startswith("modr-") and result.model == "omni-moderation-latest"
    flagged, clean = result.results
    assert flagged.flagged and flagged.categories.violence and flagged.category_scores.violence > 0.5
    assert not flagged.categories.self_harm
    assert not clean.flagged and not any(clean.categories.model_dump().values())
    assert clean.category_applied_input_types.violence == ["text"]


def test_moderations_multimodal_and_defaults(client: openai.OpenAI) -> None:
    parts: list[Any] = [
        {"type": "text", "text": "a picture"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    result = client.moderations.create(input=parts)
    assert result.model == "omni-moderation-latest"
    [only] = result.results
    assert not only.flagged and only.category_applied_input_types.violence == ["text", "image"]
    assert only.category_applied_input_types.hate == ["text"]


@pytest.mark.parametrize("body", [{"model": "omni-moderation-latest"}, {"input": 5}, {"input": [{"type": "x"}]}])
def test_moderations_bad_requests(url: str, body: dict[str, Any]) -> None:
    status, answer = http(url + "/v1/moderations", "POST", body)
    assert status == 400 and answer["error"]["param"] == "input"


def test_media_endpoints_require_the_key(url: str) -> None:
    status, _, raw = raw_http(
        url + "/v1/audio/speech",
        data=json.dumps({"model": "tts-1", "input": "x", "voice": "alloy"}).encode(),
        headers={"Authorization": "Bearer sk-nope-nope-nope-1234", "Content-Type": "application/json"},
    )
    assert status == 401
    assert json.loads(raw)["error"]["message"].startswith("Incorrect API key provided: sk-nop")
