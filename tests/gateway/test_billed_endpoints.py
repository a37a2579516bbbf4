"""The Responses API, images, audio and moderations through the gateway, as the openai SDK uses them: the model is
checked against the plan, the calls are counted, usage is read from each API's own fields."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import pytest

from gateway.accounts import AccountStore
from gateway.catalog import load_catalog
from gateway.settings import ROOT
from tests.gateway.test_allow_list import account, used
from tests.gateway.test_proxy import raw, recorded, sdk
from tests.quota.conftest import PinnedClock
from tests.support import GatewayThread

CATALOG = load_catalog(ROOT / "config" / "catalog.toml")


def test_responses_is_checked_against_the_plan_and_billed(gw: GatewayThread, store: AccountStore,
                                                          clock: PinnedClock, upstream: Any) -> None:
    free_id, free_key = account(store, "free")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(gw, free_key).responses.create(model="gpt-4o", input="hi")
    assert refused.value.code == "model_not_in_plan"
    assert recorded(upstream) == []
    answer = sdk(gw, free_key, default_headers={"X-Fake-Usage": "11,7", "X-Fake-Cached-Tokens": "4"}
                 ).responses.create(model="gpt-4o-mini", input="hello there")
    assert answer.output_text and answer.usage is not None and answer.usage.input_tokens == 11
    counters = used(store, free_id, clock, settled=1)
    assert (counters["used"], counters["pt"], counters["ct"], counters["cached"]) == (1, 11, 7, 4)
    model = CATALOG.models["gpt-4o-mini"]
    assert counters["cost_nanos"] == model.cost_nanos(11, 7)


def test_responses_over_quota_is_refused_whatever_the_content_type(
        make_gateway: Any, store: AccountStore, clock: PinnedClock, tmp_path: Any, upstream: Any) -> None:
    from tests.support import catalog_file
    gw = make_gateway(clock=clock, catalog=load_catalog(catalog_file(tmp_path, "free", included_calls=1)))
    account_id, key = account(store, "free")
    body = json.dumps({"model": "gpt-4o-mini", "input": "hi"}).encode()
    for content_type in ("application/json", "text/plain"):
        status, _, _ = raw(gw, "POST", "/v1/responses", body,
                           {"Authorization": f"Bearer {key}", "Content-Type": content_type})
        assert status == (200 if content_type == "application/json" else 429)
    assert used(store, account_id, clock, settled=1)["used"] == 1


def test_streamed_responses_are_relayed_event_by_event_and_billed_from_response_completed(
        gw: GatewayThread, store: AccountStore, clock: PinnedClock, upstream: Any) -> None:
    account_id, key = account(store, "enterprise")
    client = sdk(gw, key, default_headers={"X-Fake-Chunk-Delay-Ms": "150", "X-Fake-Chunks": "5"})
    started = time.monotonic()
    arrivals = []
    kinds = []
    events = []
    with client.responses.create(model="o3-mini", input="think", stream=True) as stream:
        for event in stream:
            arrivals.append(time.monotonic() - started)
            kinds.append(event.type)
            events.append(event)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    first_delta = arrivals[kinds.index("response.output_text.delta")]
    assert arrivals[-1] - first_delta > 0.4, "the stream was buffered before it was sent"
    completed = events[-1].response
    assert completed.usage is not None
    counters = used(store, account_id, clock, settled=1)
    assert counters["used"] == 1
    assert counters["pt"] == completed.usage.input_tokens and counters["ct"] == completed.usage.output_tokens
    assert counters["reasoning"] == completed.usage.output_tokens_details.reasoning_tokens > 0
    assert "stream_options" not in recorded(upstream)[-1]["body"]


def test_transcriptions_read_the_model_from_the_form(gw: GatewayThread, store: AccountStore, clock: PinnedClock,
                                                     upstream: Any) -> None:
    _, free_key = account(store, "free")
    audio = ("hello.wav", io.BytesIO(b"RIFF....WAVEfmt " + bytes(200)), "audio/wav")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, free_key).audio.transcriptions.create(model="whisper-1", file=audio)
    assert recorded(upstream) == []
    pro_id, pro_key = account(store, "pro")
    audio = ("hello.wav", io.BytesIO(b"RIFF....WAVEfmt " + bytes(200)), "audio/wav")
    result = sdk(gw, pro_key).audio.transcriptions.create(model="whisper-1", file=audio, language="en")
    assert result.text
    counters = used(store, pro_id, clock, settled=1)
    assert counters["used"] == 1 and counters["m:whisper-1:calls"] == 1
    assert counters["cost_nanos"] == CATALOG.models["whisper-1"].nanos_per_call
    seen = recorded(upstream)[-1]
    assert seen["body"]["model"] == "whisper-1" and seen["body"]["language"] == "en"
    assert seen["body"]["file"]["size"] == 216


def multipart(fields: list[tuple[str, str]], boundary: str = "xYzZy") -> tuple[bytes, str]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             for name, value in fields]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 "Content-Type: audio/wav\r\n\r\nRIFF\r\n")
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def test_a_form_cannot_name_two_models_or_hide_its_type(gw: GatewayThread, store: AccountStore,
                                                        upstream: Any) -> None:
    _, key = account(store, "pro")
    body, content_type = multipart([("model", "whisper-1"), ("model", "o3-mini")])
    status, _, out = raw(gw, "POST", "/v1/audio/transcriptions", body,
                         {"Authorization": f"Bearer {key}", "Content-Type": content_type})
    assert status == 400 and json.loads(out)["error"]["code"] == "duplicate_parameter"
    status, _, out = raw(gw, "POST", "/v1/audio/transcriptions", body,
                         {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"})
    assert status == 400
    body, content_type = multipart([("model", "whisper-1"), ("smuggled", "x")])
    status, _, out = raw(gw, "POST", "/v1/audio/transcriptions", body,
                         {"Authorization": f"Bearer {key}", "Content-Type": content_type})
    assert status == 400 and json.loads(out)["error"]["param"] == "smuggled"
    body, content_type = multipart([("language", "en")])
    status, _, out = raw(gw, "POST", "/v1/audio/transcriptions", body,
                         {"Authorization": f"Bearer {key}", "Content-Type": content_type})
    assert status == 400 and json.loads(out)["error"]["code"] == "missing_model"
    assert recorded(upstream) == []


def test_images_count_each_image(gw: GatewayThread, store: AccountStore, clock: PinnedClock, upstream: Any) -> None:
    account_id, key = account(store, "pro")
    result = sdk(gw, key).images.generate(model="gpt-image-1", prompt="a lighthouse", n=3, size="1024x1024")
    assert len(result.data or []) == 3 and result.usage is not None
    counters = used(store, account_id, clock, settled=3)
    assert counters["used"] == 3 and counters["ct"] == result.usage.output_tokens
    sdk(gw, key).images.generate(model="dall-e-3", prompt="a lighthouse", n=1)
    counters = used(store, account_id, clock, settled=4)
    assert counters["m:dall-e-3:calls"] == 1
    tokens_cost = CATALOG.models["gpt-image-1"].cost_nanos(counters["m:gpt-image-1:pt"], counters["m:gpt-image-1:ct"])
    assert counters["cost_nanos"] == tokens_cost + CATALOG.models["dall-e-3"].nanos_per_call


def test_speech_is_billed_and_relayed_as_audio(gw: GatewayThread, store: AccountStore, clock: PinnedClock,
                                               upstream: Any) -> None:
    account_id, key = account(store, "pro")
    speech = sdk(gw, key).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert len(speech.content) > 0
    assert used(store, account_id, clock, settled=1)["used"] == 1


def test_moderations_are_free(gw: GatewayThread, store: AccountStore, clock: PinnedClock, upstream: Any) -> None:
    account_id, key = account(store, "free")
    result = sdk(gw, key).moderations.create(model="omni-moderation-latest", input="hello")
    assert result.results
    time.sleep(0.2)
    assert used(store, account_id, clock).get("used", 0) == 0
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "sk-ah_nosuch_acct0000_" + "x" * 30).moderations.create(input="hello")


def test_forms_that_cannot_be_re_encoded_reserve_nothing(gw: GatewayThread, store: AccountStore,
                                                         clock: PinnedClock, upstream: Any) -> None:
    account_id, key = account(store, "pro")
    for filename in ('a\nb.wav', 'a\x01b.wav', 'a\\"; name=\\"model.wav'):
        body = (b'--BND\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
                b'--BND\r\nContent-Disposition: form-data; name="file"; filename="' + filename.encode() +
                b'"\r\n\r\nRIFF\r\n--BND--\r\n')
        status, headers, out = raw(gw, "POST", "/v1/audio/transcriptions", body,
                                   {"Authorization": f"Bearer {key}",
                                    "Content-Type": "multipart/form-data; boundary=BND"})
        assert status in (200, 400), filename
        assert out.startswith(b"{") and headers["x-request-id"]
    for seen in recorded(upstream):
        assert set(seen["body"]) == {"model", "file"} and seen["body"]["model"] == "whisper-1"
    counters = used(store, account_id, clock, settled=len(recorded(upstream)))
    assert counters.get("reserved", 0) == 0 and counters.get("used", 0) == len(recorded(upstream))
    odd_name = (b'--BND\r\nContent-Disposition: form-data; name="mo\x01del"\r\n\r\nwhisper-1\r\n--BND--\r\n')
    status, _, out = raw(gw, "POST", "/v1/audio/transcriptions", odd_name,
                         {"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=BND"})
    assert status == 400 and out.startswith(b"{")
    too_many = b"".join(b'--BND\r\nContent-Disposition: form-data; name="image[]"; filename="a.png"\r\n\r\nx\r\n'
                        for _ in range(17)) + b"--BND--\r\n"
    status, _, out = raw(gw, "POST", "/v1/images/edits", too_many,
                         {"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=BND"})
    assert status == 400 and json.loads(out)["error"]["code"] == "invalid_multipart"


def test_moderations_take_only_moderation_models(gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "free")
    status, _, out = raw(gw, "POST", "/v1/moderations", json.dumps({"model": "gpt-4o", "input": "hi"}).encode(),
                         {"Authorization": f"Bearer {key}"})
    assert status == 400 and json.loads(out)["error"]["param"] == "model"
    assert recorded(upstream) == []


def test_responses_store_nothing_upstream_and_hosted_tool_choices_are_refused(
        gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "pro")
    auth = {"Authorization": f"Bearer {key}"}
    plain = json.dumps({"model": "gpt-4o-mini", "input": "hi"}).encode()
    assert raw(gw, "POST", "/v1/responses", plain, auth)[0] == 200
    assert recorded(upstream)[-1]["body"]["store"] is False
    for payload in ({"model": "gpt-4o-mini", "input": "hi", "store": True},
                    {"model": "gpt-4o-mini", "input": "hi", "tool_choice": {"type": "web_search_preview"}},
                    {"model": "gpt-4o-mini", "input": "hi", "service_tier": "priority"}):
        assert raw(gw, "POST", "/v1/responses", json.dumps(payload).encode(), auth)[0] == 400, payload
    assert len(recorded(upstream)) == 1


def test_refused_families_tell_a_bad_key_401_first(gw: GatewayThread) -> None:
    assert raw(gw, "GET", "/v1/files")[0] == 401
    assert raw(gw, "GET", "/v1/files", None, {"Authorization": "Bearer sk-ah_nosuch_acct0000_" + "x" * 30})[0] == 401
