"""End to end: traffic through the gateway, the drain, and ClickHouse agrees with Redis and with what the
clients saw, per account and model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.settings import Settings
from billing_worker.usage_queries import account_totals, cost_by_model
from gateway.accounts import AccountStore
from gateway.catalog import load_catalog
from gateway.keys import AccountKeys
from tests.gateway.test_proxy import MESSAGES, sdk
from tests.quota.conftest import YEAR, PinnedClock
from tests.support import catalog_file

PLAN_MODELS = {"free": ["gpt-4o-mini", "text-embedding-3-small", "gpt-4o"],
               "pro": ["gpt-4o-mini", "gpt-4o"], "enterprise": ["gpt-4o", "o3-mini"]}


def call(client: openai.OpenAI, model: str, i: int) -> int:
    """One request; returns the calls it asks for (chat with n = 1, 2 or 3 choices counts n)."""
    if model.startswith("text-embedding"):
        client.embeddings.create(model=model, input=f"item {i} of the batch")
        return 1
    if i % 3 == 0:
        list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True, max_tokens=4 + i % 5))
        return 1
    n = 1 + i % 3
    client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2 + i % 7, n=n)
    return n


def test_clickhouse_totals_equal_redis_counters_and_admitted_requests(
        make_gateway: Any, store: AccountStore, ch: ClickHouse, settings: Settings, redis_url: str,
        tmp_path: Path) -> None:
    gateway = make_gateway(catalog=load_catalog(catalog_file(tmp_path, "free", rate_per_minute=6000, burst=100)),
                           clock=PinnedClock(f"{YEAR}-11-30T23:59:59"))     # frozen at the end of November
    admitted: dict[tuple[str, str], int] = {}
    accounts = {}
    for plan, models in PLAN_MODELS.items():
        account_id = store.create_account(f"E2E {plan}", plan)
        accounts[account_id] = plan
        client = sdk(gateway, store.issue_key(account_id).api_key)
        failing = sdk(gateway, store.issue_key(account_id).api_key, default_headers={"X-Fake-Status": "503"})
        for i in range(12):
            model = models[i % len(models)]
            try:
                calls = call(client, model, i)
                admitted[(account_id, model)] = admitted.get((account_id, model), 0) + calls
            except (openai.RateLimitError, openai.PermissionDeniedError):
                pass
            if i % 4 == 0:
                with pytest.raises(openai.InternalServerError):       # upstream failure: not billed
                    call(failing, models[0], i)
    assert sum(admitted.values()) > 20
    period = f"{YEAR}-11"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + 10
    expected_used = {a: sum(n for (acct, _), n in admitted.items() if acct == a) for a in accounts}
    while any(int(client.hget(AccountKeys(a, 16).quota(period), "used") or 0) != n for a, n in expected_used.items()):
        assert time.monotonic() < deadline, "settles did not reach Redis"
        time.sleep(0.05)

    stats = drain_once(client, ch, settings)
    assert stats.dead_lettered == 0 and stats.inserted == stats.read > len(admitted)

    for account_id in accounts:
        counters: dict[str, Any] = client.hgetall(AccountKeys(account_id, 16).quota(period))
        [totals] = account_totals(ch, period, account_id)
        assert totals.calls == int(counters["used"]) == expected_used[account_id]
        assert (totals.pt, totals.ct) == (int(counters["pt"]), int(counters["ct"]))
        assert totals.cost_nanos == int(counters["cost_nanos"])
        for line in cost_by_model(ch, period, account_id):
            assert line.calls == int(counters.get(f"m:{line.model}:calls", 0))
            assert line.calls == admitted.get((account_id, line.model or ""), 0)
            assert line.pt == int(counters.get(f"m:{line.model}:pt", 0))
    assert drain_once(client, ch, settings).read == 0                   # nothing left, nothing twice
    [again] = account_totals(ch, period, next(iter(accounts)))
    assert again.calls == expected_used[next(iter(accounts))]
    client.close()
