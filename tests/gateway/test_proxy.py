"""The transparent proxy, driven as a user would: the official openai SDK and raw HTTP."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from typing import Any

import openai
import pytest

from gateway.accounts import AccountStore
from tests.conftest import UPSTREAM_KEY
from tests.support import GatewayThread

MESSAGES: Any = [{"role": "user", "content": "Say hello to the gateway"}]


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while _clients:
        _clients.pop().close()


def sdk(gateway: GatewayThread, api_key: str, **kwargs: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, **kwargs)
    _clients.append(client)
    return client


def raw(gateway: GatewayThread | str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to a gateway (a thread, or any base URL such as a gateway process's)."""
    base = gateway if isinstance(gateway, str) else gateway.url
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def recorded(upstream: Any) -> list[dict[str, Any]]:
    with urllib.request.urlopen(upstream.url + "/_fake/requests") as response:
        return list(json.loads(response.read()))


def metric(gateway: GatewayThread, series: str) -> float:
    """The value of one Prometheus series on /metrics (0 when absent); the registry is per process."""
    for line in raw(gateway, "GET", "/metrics")[2].decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stats(upstream: Any) -> dict[str, int]:
    with urllib.request.urlopen(upstream.url + "/_fake/stats") as response:
        return dict(json.loads(response.read()))


@pytest.fixture
def pro_key(store: AccountStore) -> str:
    account = store.create_account("Acme", "pro")
    return store.issue_key(account).api_key


@pytest.fixture
def free_key(store: AccountStore) -> str:
    account = store.create_account("Hobbyist", "free")
    return store.issue_key(account).api_key


def test_chat_completion_through_the_sdk(gateway: GatewayThread, pro_key: str) -> None:
    response = sdk(gateway, pro_key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES)
    completion = response.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens == 8
    assert response.headers["x-quota-limit"] == "5000"
    assert response.headers["x-quota-remaining"] == "4999"
    assert response.headers["x-request-id"].startswith("req_")


def test_streaming_arrives_in_order_without_the_usage_chunk_the_client_did_not_ask_for(
        gateway: GatewayThread, pro_key: str) -> None:
    chunks = list(sdk(gateway, pro_key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=6))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"]
    assert all(c.choices for c in chunks), "the usage-only chunk the gateway asked for leaked"


def test_streaming_with_include_usage_yields_the_final_usage_chunk(gateway: GatewayThread, pro_key: str) -> None:
    chunks = list(sdk(gateway, pro_key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=3,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_stream_is_relayed_as_it_arrives(gateway: GatewayThread, pro_key: str) -> None:
    client = sdk(gateway, pro_key, default_headers={"X-Fake-Chunk-Delay-Ms": "300", "X-Fake-Chunks": "4"})
    started = time.monotonic()
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    first_at = time.monotonic() - started
    rest = list(stream)
    total = time.monotonic() - started
    assert first.choices[0].delta.content and rest
    assert total - first_at > 0.6, "the whole answer was buffered before the first chunk was sent"


def test_client_disconnect_cancels_the_upstream_stream(gateway: GatewayThread, pro_key: str, upstream: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.settings.port, timeout=10)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    conn.request("POST", "/v1/chat/completions", body=body, headers={
        "Authorization": f"Bearer {pro_key}", "Content-Type": "application/json",
        "X-Fake-Chunk-Delay-Ms": "200", "X-Fake-Chunks": "50"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    response.close()
    conn.close()
    deadline = time.monotonic() + 5
    while stats(upstream)["streams_cancelled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(upstream)["streams_cancelled"] == 1
    assert stats(upstream)["streams_completed"] == 0


def test_embeddings(gateway: GatewayThread, pro_key: str) -> None:
    result = sdk(gateway, pro_key).embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert len(result.data) == 2 and result.usage.prompt_tokens == 3


def test_bad_missing_and_revoked_keys_are_401(gateway: GatewayThread, store: AccountStore) -> None:
    account = store.create_account("Acme", "pro")
    issued = store.issue_key(account)
    wrong_secret = issued.api_key[:-4] + "zzzz"
    for key in (wrong_secret, "not-a-key", f"sk-ah_nosuch_acct0000_{'x' * 30}"):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.code == "invalid_api_key"
    sdk(gateway, issued.api_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    store.revoke_key(account, issued.key_id)
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, issued.api_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    status, _, body = raw(gateway, "POST", "/v1/chat/completions", b"{}", {"Content-Type": "application/json"})
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_bad_key_is_told_401_before_its_malformed_body(gateway: GatewayThread) -> None:
    status, _, _ = raw(gateway, "POST", "/v1/chat/completions", b"{not json",
                       {"Authorization": f"Bearer sk-ah_nosuch_acct0000_{'x' * 30}"})
    assert status == 401


def test_model_outside_the_plan_is_403_and_unknown_model_404(gateway: GatewayThread, free_key: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(gateway, free_key).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.code == "model_not_in_plan" and "free plan" in caught.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(gateway, free_key).chat.completions.create(model="gpt-9-imaginary", messages=MESSAGES)
    assert missing.value.code == "model_not_found"


def test_models_are_filtered_by_plan(gateway: GatewayThread, free_key: str, store: AccountStore) -> None:
    free_models = {m.id for m in sdk(gateway, free_key).models.list()}
    assert free_models == {"gpt-4o-mini", "text-embedding-3-small", "omni-moderation-latest"}
    enterprise = store.issue_key(store.create_account("Big", "enterprise")).api_key
    assert {m.id for m in sdk(gateway, enterprise).models.list()} == set(gateway.app.state.catalog.models)
    assert sdk(gateway, free_key).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.PermissionDeniedError) as outside:      # as the model routes answer
        sdk(gateway, free_key).models.retrieve("gpt-4o")
    assert outside.value.code == "model_not_in_plan"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway, free_key).models.retrieve("gpt-9-imaginary")


def test_malformed_json_is_400(gateway: GatewayThread, pro_key: str) -> None:
    for body in (b"{not json", b"[1, 2]", b""):
        status, headers, payload = raw(gateway, "POST", "/v1/chat/completions", body,
                                       {"Authorization": f"Bearer {pro_key}", "Content-Type": "application/json"})
        assert status == 400, body
        assert headers["content-type"] == "application/json"
        assert json.loads(payload)["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        sdk(gateway, pro_key).chat.completions.create(model="", messages=MESSAGES)


def test_body_over_the_limit_is_413(make_gateway: Any, pro_key: str, upstream: Any) -> None:
    gateway = make_gateway(max_body_bytes=2048)
    big = [{"role": "user", "content": "word " * 1000}]
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gateway, pro_key).chat.completions.create(model="gpt-4o-mini", messages=big)
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    # Without a Content-Length (chunked), the limit still holds while reading.
    conn = http.client.HTTPConnection("127.0.0.1", gateway.settings.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Authorization", f"Bearer {pro_key}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    payload = json.dumps({"model": "gpt-4o-mini", "messages": big}).encode()
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
    assert conn.getresponse().status == 413
    conn.close()
    assert recorded(upstream) == []


def test_upstream_failures_are_502_and_504(make_gateway: Any, pro_key: str) -> None:
    gateway = make_gateway(read_timeout_s=0.5)
    ok = sdk(gateway, pro_key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert ok.headers["x-quota-remaining"] == "4999"
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(gateway, pro_key, default_headers={"X-Fake-Status": "500"}).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES)
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    # nothing was billed: the headers show the quota as it was before the request
    assert failed.value.response.headers["x-quota-remaining"] == "4999"
    with pytest.raises(openai.InternalServerError) as hung:
        sdk(gateway, pro_key, default_headers={"X-Fake-Hang": "1"}).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES)
    assert hung.value.status_code == 504 and hung.value.code == "upstream_timeout"
    assert hung.value.response.headers["x-quota-remaining"] == "4999"


def test_unreachable_upstream_is_502(make_gateway: Any, pro_key: str) -> None:
    from gateway.redis_server import free_port
    gateway = make_gateway(upstream_urls={"default": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway, pro_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-quota-limit"] == "5000"
    assert caught.value.response.headers["x-quota-remaining"] == "5000"


def test_client_credentials_and_hop_by_hop_headers_stay_at_the_gateway(
        gateway: GatewayThread, pro_key: str, upstream: Any) -> None:
    status, _, _ = raw(gateway, "POST", "/v1/chat/completions",
                       json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode(),
                       {"Authorization": f"Bearer {pro_key}", "Content-Type": "application/json",
                        "Cookie": "session=1", "Connection": "keep-alive, X-Secret-Hop",
                        "X-Secret-Hop": "1", "Proxy-Authorization": "Basic abc", "Keep-Alive": "timeout=5",
                        "X-Forwarded-For": "10.0.0.1", "OpenAI-Organization": "org-1", "X-Custom": "dropped",
                        "X-Api-Key": "sk-ant-other", "Api-Key": "azure-key", "X-Goog-Api-Key": "goog",
                        "OpenAI-Project": "proj-1", "User-Agent": "tests/1.0", "OpenAI-Beta": "assistants=v2"})
    assert status == 200
    [seen] = recorded(upstream)
    headers = seen["headers"]
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert pro_key not in json.dumps(seen)
    for name in ("cookie", "x-secret-hop", "proxy-authorization", "keep-alive", "x-forwarded-for", "x-custom",
                 "x-api-key", "api-key", "x-goog-api-key", "openai-organization", "openai-project"):
        assert name not in headers, name
    assert headers["user-agent"] == "tests/1.0" and headers["openai-beta"] == "assistants=v2"
    assert headers["x-request-id"].startswith("req_")


def test_an_oversized_forwarded_value_is_not_sent_and_too_many_headers_are_refused(
        gateway: GatewayThread, pro_key: str, upstream: Any) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    auth = {"Authorization": f"Bearer {pro_key}", "Content-Type": "application/json"}
    status, _, _ = raw(gateway, "POST", "/v1/chat/completions", body,
                       {**auth, "User-Agent": "u" * 60_000, "OpenAI-Beta": "b" * 2048})
    assert status == 200
    [seen] = recorded(upstream)
    assert seen["headers"]["openai-beta"] == "b" * 2048        # at the limit: forwarded
    assert "u" * 60_000 not in json.dumps(seen)                  # above it: not forwarded

    many = {**auth, **{f"X-Extra-{n}": "1" for n in range(120)}}
    status, headers, answer = raw(gateway, "POST", "/v1/chat/completions", body, many)
    assert status == 431
    error = json.loads(answer)["error"]
    assert error["code"] == "request_header_fields_too_large" and "at most 100" in error["message"]
    assert headers.get("x-request-id", "").startswith("req_")
    assert len(recorded(upstream)) == 1                           # the refused request never left the gateway


class _FrontServer:
    """A server in front of the model API answering every POST with a fixed status, content-type and body
    (`{key}` in the body is replaced by the Authorization value it received, as an echoing proxy would);
    `claimed_length`: a Content-Length above the body's, the connection closed after the body (an answer cut off),
    `stall_s` seconds after it (an answer that stalls)."""

    def __init__(self, status: int, content_type: str, body: bytes, escape_key: bool = False,
                 claimed_length: int | None = None, stall_s: float = 0.0) -> None:
        import http.server
        import threading
        import time

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                echoed = self.headers.get("authorization", "")
                if escape_key:                       # as JSON \u escapes: the same string to a JSON reader
                    echoed = "".join(f"\\u{ord(c):04x}" for c in echoed)
                page = body.replace(b"{key}", echoed.encode())
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("location", "https://elsewhere.example/")
                self.send_header("content-length", str(claimed_length or len(page)))
                self.end_headers()
                self.wfile.write(page)
                self.wfile.flush()
                time.sleep(stall_s)
                self.close_connection = claimed_length is not None

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _through_front(make_gateway: Any, key: str, status: int, content_type: str, body: bytes,
                   escape_key: bool = False, claimed_length: int | None = None, stall_s: float = 0.0,
                   stream: bool = False, **settings: Any) -> tuple[int, dict[str, str], bytes]:
    front = _FrontServer(status, content_type, body, escape_key, claimed_length, stall_s)
    try:
        gateway = make_gateway(upstream_urls={"default": front.url}, **settings)
        return raw(gateway, "POST", "/v1/chat/completions",
                   json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}).encode(),
                   {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    finally:
        front.close()


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
def test_an_upstream_4xx_that_is_not_json_reaches_the_client_as_a_fixed_error(make_gateway: Any, pro_key: str,
                                                                              content_type: str) -> None:
    page = b"<html><body><h1>413 Request Entity Too Large</h1> seen: {key} at edge-7.internal</body></html>"
    status, headers, body = _through_front(make_gateway, pro_key, 413, content_type, page)
    assert status == 413 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_refused" and error["type"] == "invalid_request_error"
    assert headers["x-request-id"] in error["message"] and headers["x-quota-remaining"] == "5000"   # not billed
    assert b"edge-7" not in body and UPSTREAM_KEY.encode() not in body and b"html" not in body


@pytest.mark.parametrize("escaped", [False, True])
def test_an_upstream_json_4xx_is_relayed_without_the_operator_key(make_gateway: Any, pro_key: str,
                                                                 escaped: bool) -> None:
    echo = b'{"error": {"message": "bad request; you sent {key}", "type": "invalid_request_error", "code": null}}'
    status, headers, body = _through_front(make_gateway, pro_key, 400, "application/json; charset=utf-8", echo,
                                           escape_key=escaped)
    assert status == 400 and UPSTREAM_KEY.encode() not in body
    assert json.loads(body)["error"]["message"] == "bad request; you sent Bearer [redacted]"
    assert headers["x-quota-remaining"] == "5000" and headers["x-quota-limit"] == "5000"   # not billed


def test_failures_give_back_every_call_of_a_request_with_several(make_gateway: Any, pro_key: str) -> None:
    """n=3 is 3 calls: reserved by admit.lua, then counted on a 200 or given back on an upstream failure."""
    gateway = make_gateway()
    three = {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 3}
    ok = sdk(gateway, pro_key).chat.completions.with_raw_response.create(**three)
    assert ok.headers["x-quota-remaining"] == "4997"
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(gateway, pro_key, default_headers={"X-Fake-Status": "500"}).chat.completions.create(**three)
    assert failed.value.response.headers["x-quota-remaining"] == "4997"
    with pytest.raises(openai.RateLimitError) as limited:       # the provider's 429: not the gateway's bucket
        sdk(gateway, pro_key, default_headers={"X-Fake-Status": "429"}).chat.completions.create(**three)
    assert limited.value.code == "upstream_rate_limited"
    assert limited.value.response.headers["x-quota-remaining"] == "4997"
    assert not any(name.startswith("x-ratelimit-") for name in limited.value.response.headers)
    again = sdk(gateway, pro_key).chat.completions.with_raw_response.create(**three)
    assert again.headers["x-quota-remaining"] == "4994"


@pytest.mark.parametrize("status", [302, 407])
def test_an_upstream_redirect_or_proxy_refusal_is_not_relayed(make_gateway: Any, pro_key: str, status: int) -> None:
    answer_status, headers, body = _through_front(make_gateway, pro_key, status, "text/html",
                                                  b"squid/5.7 at proxy.corp.internal:3128")
    assert answer_status == 502 and "location" not in headers and headers["x-quota-remaining"] == "5000"
    assert json.loads(body)["error"]["code"] == "upstream_error" and b"squid" not in body


def test_paths_outside_the_table_are_refused_and_not_forwarded(gateway: GatewayThread, pro_key: str,
                                                                upstream: Any) -> None:
    auth = {"Authorization": f"Bearer {pro_key}"}
    status, _, body = raw(gateway, "GET", "/v1/files", headers=auth)
    assert status == 403 and json.loads(body)["error"]["code"] == "endpoint_not_available"
    status, _, body = raw(gateway, "GET", "/v1/no/such/thing", headers=auth)
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"
    assert recorded(upstream) == []
    unknown = json.dumps({"model": "gpt-9-imaginary", "input": "x"}).encode()
    json_type = {"Content-Type": "application/json"}
    assert raw(gateway, "POST", "/v1/responses", unknown, {"Authorization": f"Bearer {pro_key}", **json_type})[0] == 404
    assert raw(gateway, "POST", "/v1/responses", unknown,
               {"Authorization": f"Bearer sk-ah_nosuch_acct0000_{'x' * 30}", **json_type})[0] == 401


def test_health_readiness_and_metrics(gateway: GatewayThread, pro_key: str) -> None:
    assert raw(gateway, "GET", "/healthz")[0] == 200
    status, _, body = raw(gateway, "GET", "/readyz")
    assert status == 200 and json.loads(body)["redis"] == "ok"
    series = 'aihub_requests_total{model="gpt-4o-mini",route="/v1/chat/completions",status="200"}'
    before = metric(gateway, series)
    sdk(gateway, pro_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert metric(gateway, series) == before + 1
    assert metric(gateway, 'aihub_upstream_latency_seconds_count{upstream="default"}') >= 1
    status, _, body = raw(gateway, "GET", "/nowhere")
    assert status == 404 and "error" in json.loads(body)
