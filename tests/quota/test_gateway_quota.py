"""Quota through the running gateway: exactness across processes, headers, refusals, crashes, usage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import redis.asyncio as aioredis

from gateway.accounts import AccountStore
from gateway.catalog import Catalog, load_catalog
from gateway.keys import AccountKeys
from gateway.quota.engine import QuotaEngine
from gateway.quota.reaper import reap_expired
from gateway.quota.spool import Spool
from gateway.settings import Settings
from tests.conftest import UPSTREAM_KEY
from tests.gateway.test_proxy import MESSAGES, _through_front, metric, raw, sdk
from tests.quota.conftest import YEAR, Instant, PinnedClock
from tests.support import GatewayProcess, GatewayThread, catalog_file, process_env, settings_for

HUGE_RATE = {"rate_per_minute": 10**7, "burst": 10**6}
PERIOD = f"{YEAR}-11"    # the month of PinnedClock() and so of the `gateway` fixture


def post_chat(url: str, key: str, headers: dict[str, str] | None = None) -> int:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    return raw(url, "POST", "/v1/chat/completions", body,
               {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
               timeout=30)[0]


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def quota_of(client: redis.Redis, account_id: str, period: str) -> dict[str, int]:
    raw_hash = client.hgetall(AccountKeys(account_id, 16).quota(period))
    return {k.decode(): int(v) for k, v in raw_hash.items()}


def counted_quota(client: redis.Redis, account_id: str) -> dict[str, int]:
    """The counters of the one month a gateway process counted in. A process runs on the real clock (it takes
    no pinned one): its month is read off the keys it wrote, not off the clock again, which may have moved on."""
    months = [k.decode().rsplit(":", 1)[1] for k in client.keys(AccountKeys(account_id, 16).quota("*"))]
    assert len(months) <= 1, f"counted in {months}: the run crossed the end of a month"
    return quota_of(client, account_id, months[0]) if months else {}


def test_exact_quota_across_two_gateway_processes(redis_url: str, upstream: Any, tmp_path: Path) -> None:
    quota = 30
    path = catalog_file(tmp_path, "free", included_calls=quota, **HUGE_RATE)
    store = AccountStore(redis.Redis.from_url(redis_url), load_catalog(path), 16)
    account_id = store.create_account("Racer", "free")
    key = store.issue_key(account_id).api_key
    settings = settings_for(redis_url, upstream.url, UPSTREAM_KEY, tmp_path, catalog_path=path)
    gateways = [GatewayProcess(process_env(settings)).start() for _ in range(2)]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(lambda i: post_chat(gateways[i % 2].url, key), range(10 * quota)))
        assert statuses.count(200) == quota
        assert statuses.count(429) == 9 * quota
        usage = AccountKeys(account_id, 16).usage
        wait_for(lambda: store.client.xlen(usage) == quota)
        counters = counted_quota(store.client, account_id)
        assert counters["used"] == quota and counters["reserved"] == 0
        time.sleep(0.3)
        assert store.client.xlen(usage) == quota
    finally:
        for gateway in gateways:
            gateway.stop()
        store.client.close()


def test_refusals_carry_retry_after_and_openai_codes(make_gateway: Any, store: AccountStore,
                                                     tmp_path: Path) -> None:
    path = catalog_file(tmp_path, "free", included_calls=2, rate_per_minute=60, burst=1)
    clock = PinnedClock(f"{YEAR}-11-25T12:00:00")
    gateway = make_gateway(catalog=load_catalog(path), clock=clock)
    account_id = store.create_account("Limited", "free")
    key = store.issue_key(account_id).api_key
    client = sdk(gateway, key)
    ok = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert ok.headers["x-ratelimit-limit-requests"] == "1"          # the bucket's capacity (burst)
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-quota-limit"] == "2" and ok.headers["x-quota-remaining"] == "1"
    assert ok.headers["x-quota-reset"] == f"{YEAR}-12-01T00:00:00Z"
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    clock.advance(1.05)                                   # 60/min: one token a second
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    clock.advance(1.05)
    with pytest.raises(openai.RateLimitError) as exhausted:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert exhausted.value.code == "insufficient_quota"
    assert "resets at the start of the next month" in exhausted.value.message
    assert exhausted.value.response.headers["retry-after"] == str(5 * 86400 + 12 * 3600 - 2)   # to 1 December
    assert metric(gateway, 'aihub_quota_decisions_total{outcome="quota_exhausted"}') >= 1
    assert metric(gateway, "aihub_admit_latency_seconds_count") >= 3


def test_streamed_usage_lands_in_the_counters(gateway: GatewayThread, store: AccountStore) -> None:
    account_id = store.create_account("Streamer", "enterprise")
    key = store.issue_key(account_id).api_key
    client = sdk(gateway, key, default_headers={"X-Fake-Cached-Tokens": "2"})
    list(client.chat.completions.create(model="o3-mini", messages=MESSAGES, stream=True, max_tokens=5))
    wait_for(lambda: quota_of(store.client, account_id, PERIOD).get("used") == 1)
    counters = quota_of(store.client, account_id, PERIOD)
    assert counters["pt"] == 8 and counters["ct"] == 9 and counters["cached"] == 2 and counters["reasoning"] == 4
    catalog = load_catalog(Path("config/catalog.toml"))
    assert counters["cost_nanos"] == catalog.models["o3-mini"].cost_nanos(8, 9)


@pytest.mark.parametrize("forced", ["-5,10", "99999999999999,1", "none"])
def test_malformed_upstream_usage_is_not_counted(gateway: GatewayThread, store: AccountStore, forced: str) -> None:
    account_id = store.create_account("Odd", "pro")
    key = store.issue_key(account_id).api_key
    assert post_chat(gateway.url, key, {"X-Fake-Usage": forced}) == 200
    wait_for(lambda: quota_of(store.client, account_id, PERIOD).get("used") == 1)
    counters = quota_of(store.client, account_id, PERIOD)
    assert counters["pt"] == 0 and counters["ct"] == 0 and counters["cost_nanos"] == 0


def test_oversized_or_malformed_key_ids_are_401(gateway: GatewayThread) -> None:
    for key in (f"sk-ah_{'a' * 40}_abcd_{'x' * 30}", "sk-ah_ab_cd_x", "sk-ah_UPPER_abcd_" + "x" * 30,
                "sk-ah_abcd_abcd_" + "x" * 300):
        status, _, _ = raw(gateway, "POST", "/v1/chat/completions", b"{}", {"Authorization": f"Bearer {key}"})
        assert status == 401, key


def test_gateway_killed_mid_request_leaks_no_quota(redis_url: str, upstream: Any, tmp_path: Path) -> None:
    path = catalog_file(tmp_path, "free", included_calls=1, **HUGE_RATE)
    cat = load_catalog(path)
    store = AccountStore(redis.Redis.from_url(redis_url), cat, 16)
    account_id = store.create_account("Crash", "free")
    key = store.issue_key(account_id).api_key
    settings = settings_for(redis_url, upstream.url, UPSTREAM_KEY, tmp_path, catalog_path=path)
    gateway = GatewayProcess(process_env(settings)).start()
    hanging = threading.Thread(target=lambda: _swallow(post_chat, gateway.url, key, {"X-Fake-Hang": "1"}))
    hanging.start()
    wait_for(lambda: counted_quota(store.client, account_id).get("reserved") == 1)
    gateway.stop(kill=True)                                   # SIGKILL between admit and settle
    hanging.join(10)
    assert counted_quota(store.client, account_id)["reserved"] == 1
    replacement = GatewayProcess(process_env(settings)).start()
    try:
        assert post_chat(replacement.url, key) == 429             # the reservation still holds the quota
        assert reap_at(settings, cat, time.time() + settings.reservation_ttl_s + 1) == 1
        counters = counted_quota(store.client, account_id)
        assert counters["reserved"] == 0 and counters.get("used", 0) == 0
        [(_, row)] = store.client.xrange(AccountKeys(account_id, 16).usage)
        assert row[b"outcome"] == b"abandoned"
        assert post_chat(replacement.url, key) == 200
    finally:
        replacement.stop()
        store.client.close()


def reap_at(settings: Settings, catalog: Catalog, when: float) -> int:
    """Runs the reaper once as if the clock said `when`."""
    clock = PinnedClock()
    clock.now = when

    async def reap() -> int:
        client = aioredis.Redis.from_url(settings.redis_url)
        engine = QuotaEngine(settings, catalog, client, Spool(settings.spool_dir), clock)
        try:
            return await reap_expired(engine)
        finally:
            await engine.close()
            await client.aclose()

    return asyncio.run(reap())


def _swallow(fn: Any, *args: Any) -> None:
    with contextlib.suppress(OSError):   # the killed gateway resets the connection
        fn(*args)


def usage_rows(client: redis.Redis, account_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(AccountKeys(account_id, 16).usage)]


def test_billing_policy_for_failures(gateway: GatewayThread, store: AccountStore, upstream: Any) -> None:
    """Billed: upstream 2xx that began serving (even if the client left or the stream broke off).
    Not billed: upstream errors. Every request leaves one usage row either way."""
    account_id = store.create_account("Policy", "pro")
    key = store.issue_key(account_id).api_key
    assert post_chat(gateway.url, key, {"X-Fake-Status": "500"}) == 502
    assert post_chat(gateway.url, key, {"X-Fake-Status": "400"}) == 400
    with pytest.raises(openai.APIError, match="broke off the stream"):
        list(sdk(gateway, key, default_headers={"X-Fake-Drop": "mid-stream", "X-Fake-Chunks": "6"})
             .chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    conn = http.client.HTTPConnection("127.0.0.1", gateway.settings.port, timeout=10)
    conn.request("POST", "/v1/chat/completions",
                 body=json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode(),
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                          "X-Fake-Chunk-Delay-Ms": "100", "X-Fake-Chunks": "40"})
    response = conn.getresponse()
    response.readline()
    response.close()
    conn.close()
    wait_for(lambda: len(usage_rows(store.client, account_id)) == 4)
    rows = {(r[b"outcome"].decode(), r[b"status"].decode()): r[b"calls"].decode()
            for r in usage_rows(store.client, account_id)}
    assert rows == {("upstream_error", "500"): "0", ("upstream_error", "400"): "0",
                    ("upstream_error", "200"): "1", ("client_cancel", "200"): "1"}
    counters = quota_of(store.client, account_id, PERIOD)
    assert counters["used"] == 2 and counters["reserved"] == 0


@pytest.mark.parametrize(("cut", "status", "code"), [("closed", 502, "upstream_error"),
                                                     ("stalled", 504, "upstream_timeout")])
def test_a_whole_answer_that_broke_off_or_stalled_is_not_billed(make_gateway: Any, store: AccountStore, cut: str,
                                                                 status: int, code: str) -> None:
    """The upstream answered 200 and sent 24 bytes of 1000, then closed the connection or fell silent past the read
    timeout: the client gets a 502 or 504 and nothing of the answer, so the call is given back (see the stream
    test below for an answer the client got part of)."""
    account_id = store.create_account("Cut off", "pro")
    key = store.issue_key(account_id).api_key
    answer, headers, body = _through_front(make_gateway, key, 200, "application/json", b'{"id": "chatcmpl-1", "ob',
                                           claimed_length=1000, stall_s=1.5 if cut == "stalled" else 0.0,
                                           read_timeout_s=0.5)
    assert answer == status and json.loads(body)["error"]["code"] == code
    assert headers["x-quota-remaining"] == "5000"
    wait_for(lambda: len(usage_rows(store.client, account_id)) == 1)
    row = usage_rows(store.client, account_id)[0]
    assert (row[b"outcome"], row[b"status"], row[b"calls"], row[b"cost_nanos"]) == (
        b"upstream_error", str(status).encode(), b"0", b"0")
    assert counted_quota(store.client, account_id).get("used", 0) == 0


def test_a_stream_that_broke_off_is_billed_only_once_an_event_reached_the_client(make_gateway: Any,
                                                                                  store: AccountStore) -> None:
    account_id = store.create_account("Streams", "pro")
    key = store.issue_key(account_id).api_key
    event = b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}\n\n'
    for body in (b"data: {\"id\": \"c", event + b"data: {\"id\""):    # broken inside the first event, after it
        answer, _, relayed = _through_front(make_gateway, key, 200, "text/event-stream", body, claimed_length=5000,
                                            stream=True)
        assert answer == 200 and relayed.startswith(event) == body.startswith(event)
        assert relayed.endswith(b"event: error\ndata: " + json.dumps(
            {"error": {"message": "The upstream broke off the stream; the answer is incomplete.", "type": "api_error",
                       "param": None, "code": "upstream_error"}}).encode() + b"\n\n")
    wait_for(lambda: len(usage_rows(store.client, account_id)) == 2)
    rows = [(r[b"outcome"], r[b"status"], r[b"calls"]) for r in usage_rows(store.client, account_id)]
    assert rows == [(b"upstream_error", b"200", b"0"), (b"upstream_error", b"200", b"1")]
    assert counted_quota(store.client, account_id)["used"] == 1


def test_a_call_at_23_59_59_counts_in_its_month_and_one_at_midnight_in_the_next(
        make_gateway: Any, store: AccountStore, clock: PinnedClock, instant: Instant, tmp_path: Path) -> None:
    gateway = make_gateway(catalog=load_catalog(catalog_file(tmp_path, "free", included_calls=2, **HUGE_RATE)),
                           clock=clock)
    account_id = store.create_account("Night owl", "free")
    client = sdk(gateway, store.issue_key(account_id).api_key)
    clock.set(instant.last_second)
    for remaining in ("1", "0"):
        ok = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert ok.headers["x-quota-reset"] == instant.reset and ok.headers["x-quota-remaining"] == remaining
    with pytest.raises(openai.RateLimitError) as exhausted:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert exhausted.value.code == "insufficient_quota"
    assert exhausted.value.response.headers["retry-after"] == "1"
    clock.set(instant.reset)
    fresh = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert (fresh.headers["x-quota-limit"], fresh.headers["x-quota-remaining"]) == ("2", "1")
    assert fresh.headers["x-quota-reset"] > instant.reset
    wait_for(lambda: quota_of(store.client, account_id, instant.next_period).get("used") == 1)
    assert quota_of(store.client, account_id, instant.period)["used"] == 2
