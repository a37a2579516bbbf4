"""No way around the quota: odd path spellings, Content-Type games, endpoints and fields outside the allow-list,
one request asking for many calls. Each test is a hostile client's attempt, checked from the outside: the status
it gets, what reached the upstream, and what the account's counters say."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from gateway.accounts import AccountStore
from gateway.catalog import load_catalog
from gateway.endpoints import markdown_table
from gateway.keys import AccountKeys
from gateway.settings import ROOT
from tests.gateway.test_proxy import MESSAGES, raw, recorded, sdk
from tests.quota.conftest import PinnedClock
from tests.quota.test_gateway_quota import wait_for
from tests.support import GatewayThread, catalog_file


def used(store: AccountStore, account_id: str, clock: PinnedClock, settled: int | None = None) -> dict[str, int]:
    """The account's counters for the clock's month; with `settled`, once that many calls are settled (settle runs
    just after the response)."""
    period = time.strftime("%Y-%m", time.gmtime(clock()))
    client: redis.Redis = store.client

    def read() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(AccountKeys(account_id, 16).quota(period)).items()}
    if settled is not None:
        wait_for(lambda: read().get("used", 0) >= settled and read().get("reserved", 0) == 0)
    return read()


def account(store: AccountStore, plan: str) -> tuple[str, str]:
    account_id = store.create_account(f"Hostile {plan}", plan)
    return account_id, store.issue_key(account_id).api_key


def post(gw: GatewayThread, key: str, path: str, payload: Any, content_type: str = "application/json",
         extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, headers, out = raw(gw, "POST", path, body,
                               {"Authorization": f"Bearer {key}", "Content-Type": content_type, **(extra or {})})
    try:
        return status, headers, json.loads(out)
    except ValueError:
        return status, headers, out


PATH_SPELLINGS = [
    "/v1/./chat/completions", "/v1//chat/completions", "/v1/chat/completions/", "/v1/chat%2Fcompletions",
    "/v1/%63hat/completions", "/v1/chat/../chat/completions", "/v1/chat/completions/.", "//v1/chat/completions",
    "/v1/chat/completions/..", "/v1/x/../chat/completions", "/v1/chat/%2e%2e/chat/completions",
    "/v1/chat/completions%00", "/v1/chat/completions;x=1", "/v1/./responses", "/v1/responses/",
    "/v1/%2e/embeddings", "/v1/audio//transcriptions", "/%761/chat/completions", "/v1/Chat/Completions",
]


@pytest.mark.parametrize("path", PATH_SPELLINGS)
def test_odd_path_spellings_are_refused_and_never_reach_the_upstream(
        gw: GatewayThread, store: AccountStore, upstream: Any, clock: PinnedClock, path: str) -> None:
    account_id, key = account(store, "free")
    status, headers, body = post(gw, key, path, {"model": "gpt-4o", "messages": MESSAGES, "input": "hi"})
    assert status == 404, body
    assert body["error"]["code"] == "unknown_url"
    assert headers["x-request-id"].startswith("req_")
    assert recorded(upstream) == []
    assert used(store, account_id, clock).get("used", 0) == 0


def test_the_checked_path_is_the_path_sent_upstream(gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "pro")
    status, _, _ = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert status == 200
    [seen] = recorded(upstream)
    assert seen["path"] == "/v1/chat/completions"
    assert seen.get("raw_path", "/v1/chat/completions") == "/v1/chat/completions"


def test_query_strings_are_refused_on_model_routes(gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "pro")
    status, _, body = post(gw, key, "/v1/chat/completions?model=o3-mini", {"model": "gpt-4o-mini",
                                                                           "messages": MESSAGES})
    assert status == 400 and body["error"]["code"] == "unknown_parameter"
    assert recorded(upstream) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/xml"])
def test_content_type_does_not_decide_billing(make_gateway: Any, store: AccountStore, upstream: Any,
                                              clock: PinnedClock, tmp_path: Path, content_type: str) -> None:
    gw = make_gateway(clock=clock, catalog=load_catalog(catalog_file(tmp_path, "free", included_calls=1)))
    account_id, key = account(store, "free")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    status, _, _ = post(gw, key, "/v1/chat/completions", body, content_type)
    assert status == 200
    assert used(store, account_id, clock, settled=1)["used"] == 1
    assert recorded(upstream)[-1]["headers"]["content-type"] == "application/json"
    status, _, refused = post(gw, key, "/v1/chat/completions", body, content_type)
    assert status == 429 and refused["error"]["code"] == "insufficient_quota"
    assert len(recorded(upstream)) == 1


def test_unknown_and_refused_endpoints(gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "enterprise")
    auth = {"Authorization": f"Bearer {key}"}
    batch = json.dumps({"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"}).encode()
    for method, path in (("POST", "/v1/batches"), ("GET", "/v1/batches"), ("POST", "/v1/files"),
                         ("GET", "/v1/files/file-abc/content"), ("POST", "/v1/fine_tuning/jobs"),
                         ("POST", "/v1/assistants"), ("POST", "/v1/uploads")):
        status, _, out = raw(gw, method, path, batch, auth)
        assert status == 403 and json.loads(out)["error"]["code"] == "endpoint_not_available", path
    for path in ("/v1/chat/completions/chatcmpl-1", "/v1/responses/resp_1", "/v1/engines", "/v1"):
        status, _, out = raw(gw, "GET", path, None, auth)
        assert status in (404, 405), path
    assert recorded(upstream) == []


def test_wrong_methods_are_405_with_allow(gw: GatewayThread, store: AccountStore) -> None:
    _, key = account(store, "pro")
    auth = {"Authorization": f"Bearer {key}"}
    for method, path, allow in (("POST", "/healthz", "GET"), ("DELETE", "/metrics", "GET"),
                                ("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/embeddings", "POST"),
                                ("POST", "/v1/models", "GET"), ("DELETE", "/v1/models/gpt-4o-mini", "GET")):
        status, headers, out = raw(gw, method, path, b"{}", auth)
        assert status == 405, (method, path)
        assert allow in headers["allow"] and json.loads(out)["error"]["code"] == "method_not_allowed"
        assert headers["x-request-id"].startswith("req_")


def test_unknown_fields_and_hosted_tools_are_refused(gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "enterprise")
    base = {"model": "gpt-4o-mini", "messages": MESSAGES}
    cases = [
        ({**base, "surprise": 1}, "unknown_parameter", "surprise"),
        ({**base, "web_search_options": {}}, "unsupported_parameter", "web_search_options"),
        ({**base, "tools": [{"type": "web_search"}]}, "tool_not_available", "tools"),
        ({**base, "tools": "all"}, "invalid_value", "tools"),
        ({**base, "n": 0}, "invalid_value", "n"),
        ({**base, "n": True}, "invalid_value", "n"),
        ({**base, "max_tokens": -1}, "invalid_value", "max_tokens"),
        ({**base, "max_tokens": 5.5}, "invalid_value", "max_tokens"),
        ({**base, "stream": "true"}, "invalid_value", "stream"),
        ({**base, "stream": True, "stream_options": "yes"}, "invalid_value", "stream_options"),
        ({**base, "n": "x"}, "invalid_value", "n"),
    ]
    for payload, code, param in cases:
        status, _, body = post(gw, key, "/v1/chat/completions", payload)
        assert status == 400 and body["error"]["code"] == code and body["error"]["param"] == param, payload
    for field in ("previous_response_id", "conversation", "background", "prompt"):
        status, _, body = post(gw, key, "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", field: "x"})
        assert status == 400 and body["error"]["param"] == field
    status, _, _ = post(gw, key, "/v1/chat/completions",
                        {**base, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})
    assert status == 200
    assert len(recorded(upstream)) == 1


def test_duplicate_json_keys_reach_the_upstream_as_the_gateway_read_them(
        gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "free")
    body = b'{"model": "o3-mini", "messages": [{"role": "user", "content": "x"}], "model": "gpt-4o-mini"}'
    status, _, _ = post(gw, key, "/v1/chat/completions", body)
    assert status == 200
    assert recorded(upstream)[-1]["body"]["model"] == "gpt-4o-mini"


def test_one_request_that_asks_for_many_calls_is_counted_as_many(
        gw: GatewayThread, store: AccountStore, upstream: Any, clock: PinnedClock) -> None:
    account_id, key = account(store, "pro")
    status, headers, _ = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 3})
    assert status == 200 and headers["x-quota-remaining"] == str(5000 - 3)
    status, _, _ = post(gw, key, "/v1/completions", {"model": "gpt-4o-mini", "prompt": ["a", "b", "c"], "n": 2})
    assert status == 200
    status, _, _ = post(gw, key, "/v1/completions", {"model": "gpt-4o-mini", "prompt": "a", "n": 1, "best_of": 4})
    assert status == 200
    status, _, _ = post(gw, key, "/v1/completions", {"model": "gpt-4o-mini", "prompt": [1, 2, 3]})
    assert status == 200
    counters = used(store, account_id, clock, settled=14)
    assert counters["used"] == 3 + 6 + 4 + 1 and counters["reserved"] == 0
    assert counters["m:gpt-4o-mini:calls"] == 14
    status, _, body = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 50})
    assert status == 400 and body["error"]["code"] == "too_many_calls" and "16" in body["error"]["message"]
    status, _, body = post(gw, key, "/v1/completions", {"model": "gpt-4o-mini", "prompt": ["a"] * 20})
    assert status == 400 and body["error"]["code"] == "too_many_calls"
    assert used(store, account_id, clock)["used"] == 14


def test_many_calls_are_admitted_only_while_that_many_remain(
        make_gateway: Any, store: AccountStore, clock: PinnedClock, tmp_path: Path, upstream: Any) -> None:
    gw = make_gateway(clock=clock, catalog=load_catalog(catalog_file(tmp_path, "free", included_calls=5)))
    account_id, key = account(store, "free")
    ok = {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 3}
    assert post(gw, key, "/v1/chat/completions", ok)[0] == 200
    used(store, account_id, clock, settled=3)
    status, headers, body = post(gw, key, "/v1/chat/completions", ok)
    assert status == 429 and body["error"]["code"] == "insufficient_quota"
    assert headers["x-quota-remaining"] == "2" and headers["x-quota-reset"].endswith("-01T00:00:00Z")
    assert "pay-as-you-go" not in body["error"]["message"]          # the Free plan has no overage
    assert post(gw, key, "/v1/chat/completions", {**ok, "n": 2})[0] == 200
    assert used(store, account_id, clock, settled=5)["used"] == 5


def test_pay_as_you_go_overage_counts_each_call_past_the_limit(
        make_gateway: Any, store: AccountStore, clock: PinnedClock, tmp_path: Path, upstream: Any) -> None:
    gw = make_gateway(clock=clock, catalog=load_catalog(catalog_file(tmp_path, "pro", included_calls=4)))
    account_id, key = account(store, "pro")
    refused = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 6})
    assert refused[0] == 429 and "pay-as-you-go" in refused[2]["error"]["message"]
    store.set_overage(account_id, True)
    assert post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 3})[0] == 200
    assert post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 3})[0] == 200
    counters = used(store, account_id, clock, settled=6)
    assert counters["used"] == 6 and counters["overage"] == 2


def test_output_token_cap_per_plan(gw: GatewayThread, store: AccountStore, upstream: Any) -> None:
    _, key = account(store, "free")
    cap = load_catalog(ROOT / "config" / "catalog.toml").plans["free"].max_output_tokens
    for field in ("max_tokens", "max_completion_tokens"):
        status, _, body = post(gw, key, "/v1/chat/completions",
                               {"model": "gpt-4o-mini", "messages": MESSAGES, field: cap + 1})
        assert status == 400 and body["error"]["code"] == "max_tokens_above_plan_cap", field
    assert recorded(upstream) == []
    assert post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})[0] == 200
    assert recorded(upstream)[-1]["body"]["max_completion_tokens"] == cap      # set when the client gave none
    assert post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES,
                                                  "max_tokens": 5})[0] == 200
    assert recorded(upstream)[-1]["body"]["max_tokens"] == 5


def test_every_response_carries_a_request_id(gw: GatewayThread, store: AccountStore) -> None:
    _, key = account(store, "pro")
    seen = set()
    for method, path, headers in (("GET", "/nowhere", {}), ("GET", "/v1/models", {}),
                                  ("GET", "/v1/models", {"Authorization": f"Bearer {key}"}),
                                  ("POST", "/healthz", {}), ("GET", "/healthz", {}),
                                  ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {key}"})):
        status, out, _ = raw(gw, method, path, b"{}" if method == "POST" else None, headers)
        assert out["x-request-id"].startswith("req_"), (method, path, status)
        seen.add(out["x-request-id"])
    assert len(seen) == 6


def test_rate_limit_headers_describe_one_bucket(make_gateway: Any, store: AccountStore, clock: PinnedClock,
                                                tmp_path: Path, upstream: Any) -> None:
    gw = make_gateway(clock=clock, catalog=load_catalog(catalog_file(tmp_path, "free", burst=3, rate_per_minute=60)))
    _, key = account(store, "free")
    seen = []
    for _ in range(3):
        status, headers, _ = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
        assert status == 200
        seen.append((headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]))
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
    status, headers, body = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "3.000s" and headers["retry-after"] == "1"
    clock.advance(1.0)                                   # one token back at 60 per minute
    status, headers, _ = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"


def test_upstream_auth_failures_are_not_relayed(make_gateway: Any, store: AccountStore, upstream: Any) -> None:
    leaky_key = "sk-operator-SECRETKEY-0123456789"
    gw = make_gateway(upstream_keys={"default": leaky_key})
    _, key = account(store, "pro")
    status, headers, body = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert headers["x-request-id"] in body["error"]["message"]
    text = json.dumps(body)
    assert "sk-ope" not in text and "6789" not in text and "Incorrect API key" not in text
    gw = make_gateway()
    for status_code, expected in (("500", 502), ("503", 502), ("403", 502), ("401", 502), ("429", 429)):
        status, headers, body = post(gw, key, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES},
                                     extra={"X-Fake-Status": status_code})
        assert status == expected, status_code
        assert headers["x-request-id"] in body["error"]["message"]


def test_upstream_url_may_end_in_v1(make_gateway: Any, store: AccountStore, upstream: Any) -> None:
    from gateway.settings import Settings
    settings = Settings.from_env({"AIHUB_UPSTREAM_DEFAULT_URL": upstream.url + "/v1/"})
    gw = make_gateway(upstream_urls=settings.upstream_urls)
    _, key = account(store, "pro")
    assert sdk(gw, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    assert recorded(upstream)[-1]["path"] == "/v1/chat/completions"


def test_sdk_sees_the_allow_list_errors_as_their_types(gw: GatewayThread, store: AccountStore) -> None:
    _, key = account(store, "free")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gw, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=20)
    assert caught.value.code == "too_many_calls"


def test_readme_endpoint_table_is_the_allow_list() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text()
