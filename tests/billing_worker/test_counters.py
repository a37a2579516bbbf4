"""Rebuilding the monthly counters from ClickHouse after Redis lost its data (billing_worker.counters)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from sqlalchemy import Engine

from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate as migrate_db
from billing.projection import Projector, resync
from billing_worker.clickhouse import ClickHouse
from billing_worker.counters import rebuild_all_counters, rebuild_counters
from billing_worker.drain import drain_once
from billing_worker.migrate import migrate
from billing_worker.settings import Settings
from billing_worker.usage_queries import account_totals, cost_by_model
from gateway.catalog import Catalog, load_catalog
from gateway.keys import AccountKeys
from gateway.quota.periods import DAY_S, period_named
from tests.billing_worker.usage_factory import make_entry, write_entries
from tests.gateway.test_proxy import MESSAGES, sdk
from tests.quota.conftest import YEAR, PinnedClock
from tests.support import catalog_file

PERIOD = "2026-11"
EXPIRE_AT = period_named(PERIOD).end_s + 62 * DAY_S


def quota(client: Any, acct: str, period: str = PERIOD) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in client.hgetall(AccountKeys(acct, 16).quota(period)).items()}


def usage_entries() -> list[dict[str, str]]:
    """Five accounts, three models, 1..3 calls per request, some overage, some unbilled, one other period."""
    entries = []
    for i in range(90):
        calls = 0 if i % 11 == 0 else 1 + i % 3
        extra: dict[str, Any] = {"calls": calls, "overage": 1 if calls and i % 7 == 0 else 0, "reasoning": i % 4}
        if calls == 0:
            extra.update(outcome="upstream_error", status=503, pt=0, ct=0, cached=0, reasoning=0, cost_nanos=0)
        entries.append(make_entry(i, **extra))
    entries.append(make_entry(500, acct="acct1", period="2026-10", calls=3))   # another period: not counted
    return entries


@pytest.fixture
def loaded(r: redis.Redis, ch: ClickHouse, settings: Settings) -> list[dict[str, str]]:
    entries = usage_entries()
    write_entries(r, entries)
    write_entries(r, entries[:10])                       # replayed: FINAL counts each request id once
    assert drain_once(r, ch, settings).inserted == len(entries) + 10
    return entries


def expected(entries: list[dict[str, str]], acct: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        if e["acct"] != acct or e["period"] != PERIOD or e["calls"] == "0":
            continue
        for name, source in (("used", "calls"), ("overage", "overage"), ("pt", "pt"), ("ct", "ct"),
                             ("cached", "cached"), ("reasoning", "reasoning"), ("cost_nanos", "cost_nanos")):
            out[name] = out.get(name, 0) + int(e[source])
        for name, source in (("calls", "calls"), ("pt", "pt"), ("ct", "ct")):
            field = f"m:{e['model']}:{name}"
            out[field] = out.get(field, 0) + int(e[source])
    return {k: v for k, v in out.items() if v}


def test_flushed_counters_are_rebuilt_from_clickhouse(r: redis.Redis, ch: ClickHouse,
                                                      loaded: list[dict[str, str]]) -> None:
    r.flushall()
    r.hset(AccountKeys("acct2", 16).quota(PERIOD), "reserved", 2)     # an in-flight request: left alone
    report = rebuild_counters(ch, r, PERIOD, 16, EXPIRE_AT)
    accounts = {f"acct{n}" for n in range(5)}
    assert report["accounts"] == 5 and report["redis_ahead"] == 0
    assert report["calls"] == sum(t.calls for t in account_totals(ch, PERIOD))
    for acct in accounts:
        counters = quota(r, acct)
        [totals] = account_totals(ch, PERIOD, acct)
        assert int(counters["used"]) == totals.calls > 0
        assert int(counters["overage"]) == totals.overage_calls
        assert (int(counters["pt"]), int(counters["ct"]), int(counters["cost_nanos"])) == \
            (totals.pt, totals.ct, totals.cost_nanos)
        for line in cost_by_model(ch, PERIOD, acct):
            assert int(counters[f"m:{line.model}:calls"]) == line.calls
            assert int(counters[f"m:{line.model}:pt"]) == line.pt
        want = expected(loaded, acct)
        assert {k: int(v) for k, v in counters.items() if k != "reserved"} == want
        assert r.expiretime(AccountKeys(acct, 16).quota(PERIOD)) == EXPIRE_AT
        assert "warn80" not in counters and "warn100" not in counters          # no catalog: limit unknown
    assert quota(r, "acct2")["reserved"] == "2"
    assert quota(r, "acct1", "2026-10") == {}                                  # only the period asked for
    again = rebuild_counters(ch, r, PERIOD, 16, EXPIRE_AT)                     # idempotent
    assert again["fields_raised"] == 0 and again["accounts"] == 5


def test_a_counter_is_never_lowered(r: redis.Redis, ch: ClickHouse, loaded: list[dict[str, str]]) -> None:
    want = expected(loaded, "acct3")
    key = AccountKeys("acct3", 16).quota(PERIOD)
    r.flushall()
    # settled after the last drain: Redis is ahead of ClickHouse on these fields, behind on the others
    r.hset(key, mapping={"used": want["used"] + 5, "pt": want["pt"] + 1000, "m:gpt-4o:calls": 10_000,
                         "cost_nanos": 12_345_678_901_234_567_890, "ct": 1})
    report = rebuild_counters(ch, r, PERIOD, 16, EXPIRE_AT, accounts=["acct3"])
    counters = quota(r, "acct3")
    assert report["accounts"] == 1 and report["redis_ahead"] == 1
    assert int(counters["used"]) == want["used"] + 5
    assert int(counters["pt"]) == want["pt"] + 1000
    assert int(counters["m:gpt-4o:calls"]) == 10_000
    assert counters["cost_nanos"] == "12345678901234567890"               # compared exactly, not as floats
    assert int(counters["ct"]) == want["ct"] > 1
    assert int(counters["m:o3-mini:pt"]) == want["m:o3-mini:pt"]
    assert quota(r, "acct0") == {}                                        # not asked for


def test_warning_flags_follow_the_projected_limit(r: redis.Redis, ch: ClickHouse, settings: Settings,
                                                  catalog: Catalog) -> None:
    free = catalog.plans["free"]
    entries = [make_entry(i, acct="warned", calls=1) for i in range(free.included_calls * 85 // 100)]
    entries += [make_entry(1000 + i, acct="boosted", calls=1) for i in range(free.included_calls * 17 // 10)]
    entries += [make_entry(2000 + i, acct="unknown", calls=1) for i in range(free.included_calls)]
    write_entries(r, entries)
    drain_once(r, ch, settings)
    r.flushall()
    now_s = period_named(PERIOD).start_s + 10 * DAY_S
    for acct in ("warned", "boosted"):
        r.hset(AccountKeys(acct, 16).account, mapping={"plan": "free", "status": "active"})
    r.zadd(AccountKeys("boosted", 16).boosts, {"b1:100": (now_s + 3600) * 1000, "b2:900": (now_s - 1) * 1000})
    report = rebuild_counters(ch, r, PERIOD, 16, EXPIRE_AT, catalog=catalog, now_s=now_s)
    assert report["warnings_flagged"] == 2
    warned, boosted, unknown = quota(r, "warned"), quota(r, "boosted"), quota(r, "unknown")
    assert warned["warn80"] == "1" and "warn100" not in warned            # 85 of 100
    assert boosted["warn80"] == "1" and "warn100" not in boosted          # 170 of 100 + 100 boosted (b2 expired)
    assert "warn80" not in unknown                                        # no account hash: limit unknown


def test_rebuild_all_counters_reads_its_settings(redis_url: str, settings: Settings, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now_s = time.time()
    period = period_named(time.strftime("%Y-%m", time.gmtime(now_s)))
    start_ms = int(now_s * 1000) - 1000
    entries = [make_entry(i, acct="nowacct", period=period.name, ts_start_ms=start_ms, ts_end_ms=start_ms + 5,
                          calls=2) for i in range(7)]
    write_entries(client, entries)
    with ClickHouse(settings.clickhouse_url) as ch:
        migrate(ch, settings.schema_dir)
        drain_once(client, ch, settings)
    client.flushall()
    environ = {"REDIS_URL": redis_url, "CLICKHOUSE_URL": settings.clickhouse_url,
               "AIHUB_PERIOD_GRACE_DAYS": "3"}
    report = rebuild_all_counters(environ, now_s=now_s)
    assert report == {"period": period.name, "accounts": 1, "calls": 14, "fields_raised": report["fields_raised"],
                      "accounts_raised": 1, "redis_ahead": 0, "warnings_flagged": 0}
    key = AccountKeys("nowacct", 16).quota(period.name)
    assert client.hget(key, "used") == "14"
    assert client.expiretime(key) == period.end_s + 3 * DAY_S
    client.close()


@pytest.mark.cluster
def test_rebuild_on_a_redis_cluster(cluster_redis: redis.RedisCluster, ch: ClickHouse,
                                    loaded: list[dict[str, str]]) -> None:
    report = rebuild_counters(ch, cluster_redis, PERIOD, 16, EXPIRE_AT)
    assert report["accounts"] == 5
    for n in range(5):
        assert {k: int(v) for k, v in quota(cluster_redis, f"acct{n}").items()} == expected(loaded, f"acct{n}")
        assert cluster_redis.expiretime(AccountKeys(f"acct{n}", 16).quota(PERIOD)) == EXPIRE_AT


# -- end to end: flush Redis under a running gateway, rebuild the projection and the counters ---------------

@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/aihub.db")
    migrate_db(engine)
    yield engine
    engine.dispose()


def test_flushed_redis_under_a_running_gateway_is_rebuilt(
        make_gateway: Any, ch: ClickHouse, settings: Settings, redis_url: str, sqlite_engine: Engine,
        tmp_path: Path) -> None:
    catalog = load_catalog(catalog_file(tmp_path, "free", rate_per_minute=6000, burst=100))
    clock = PinnedClock(f"{YEAR}-11-25T12:00:00")
    period = f"{YEAR}-11"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    projector = Projector(client, 16, clock)
    service = AccountService(sessions(sqlite_engine), projector, catalog, clock)
    gateway = make_gateway(catalog=catalog, clock=clock)
    keys: dict[str, str] = {}
    sent: dict[str, int] = {}
    for plan, requests in (("free", 9), ("pro", 6)):
        account_id = service.create_account(f"Recovery {plan}", plan).account["id"]
        keys[account_id] = service.issue_key(account_id)[0].api_key
        api = sdk(gateway, keys[account_id])
        for i in range(requests):
            api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3 + i)
        sent[account_id] = requests

    def used(account_id: str) -> int:
        return int(client.hget(AccountKeys(account_id, 16).quota(period), "used") or 0)

    deadline = time.monotonic() + 10
    while any(used(a) != n for a, n in sent.items()):
        assert time.monotonic() < deadline, "settles did not reach Redis"
        time.sleep(0.05)
    assert drain_once(client, ch, settings).inserted == sum(sent.values())

    client.flushall()                                                   # Redis lost everything
    for api_key in keys.values():
        with pytest.raises(openai.AuthenticationError):
            sdk(gateway, api_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert resync(service.sessions, projector).projected == 2
    report = rebuild_counters(ch, client, period, 16, period_named(period).end_s + 62 * DAY_S, catalog=catalog,
                              now_s=clock())
    assert report["accounts"] == 2 and report["calls"] == sum(sent.values())
    for account_id, api_key in keys.items():
        [totals] = account_totals(ch, period, account_id)
        assert used(account_id) == totals.calls == sent[account_id]
        sdk(gateway, api_key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # works again
    deadline = time.monotonic() + 10
    while any(used(a) != n + 1 for a, n in sent.items()):                # counting goes on from the rebuilt value
        assert time.monotonic() < deadline, "settles did not reach Redis"
        time.sleep(0.05)
    client.close()


def test_aihub_resync_counters_restores_keys_and_used_calls_after_a_flush(
        redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli import main
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    assert main(["create-account", "--name", "Flushed", "--plan", "pro", "--id", "flushed", "--bank-transfer",
                 "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now_s = time.time()
    period = time.strftime("%Y-%m", time.gmtime(now_s))
    start_ms = int(now_s * 1000) - 1000
    write_entries(client, [make_entry(i, acct="flushed", key=created["key_id"], period=period, ts_start_ms=start_ms,
                                      ts_end_ms=start_ms + 5) for i in range(9)])
    with ClickHouse(settings.clickhouse_url) as ch:
        migrate(ch, settings.schema_dir)
        drain_once(client, ch, settings)
    client.flushall()
    assert main(["resync", "--counters", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["projected"] == 1 and report["counters"]["calls"] == 9
    keys = AccountKeys("flushed", 16)
    assert client.hget(keys.api_key(created["key_id"]), "status") == "active"
    assert client.hget(keys.quota(period), "used") == "9"
    client.close()
