"""Write-through: each admin change lands in the database (with its history) and in the Redis projection that
admit.lua reads; on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import ApiKey, AuditEntry, PlanChange
from billing.errors import Conflict, InvalidInput, NotFound
from billing.projection import Projector, load_account, resync
from gateway.catalog import Catalog
from gateway.keys import AccountKeys, hash_api_key
from gateway.redis_server import RedisServer
from tests.quota.conftest import PinnedClock, epoch


def projected(r: redis.Redis, account_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(AccountKeys(account_id, 16).account).items()}


def test_create_issue_and_change_are_in_the_database_and_in_redis(service: AccountService, r: redis.Redis,
                                                                  db: sessionmaker[Session]) -> None:
    change = service.create_account("Acme GmbH", "pro", country="de", billing_email="billing@acme.example")
    account_id = change.account["id"]
    assert change.projected and change.account["subscription"]["plan"] == "pro"
    issued, was_projected = service.issue_key(account_id, "ci")
    assert was_projected
    keys = AccountKeys(account_id, 16)
    stored = r.hgetall(keys.api_key(issued.key_id))
    assert stored[b"sha256"] == hash_api_key(issued.api_key).encode() and stored[b"status"] == b"active"
    with db() as session:
        [row] = session.scalars(select(ApiKey).where(ApiKey.account_id == account_id))
        assert row.sha256 == hash_api_key(issued.api_key) and issued.api_key not in repr(row.__dict__)
    service.set_plan(account_id, "enterprise", actor="ops@aihub")
    service.set_status(account_id, "suspended")
    service.revoke_key(account_id, issued.key_id)
    after = projected(r, account_id)
    assert (after["plan"], after["status"], after["country"]) == ("enterprise", "suspended", "DE")
    assert r.hget(keys.api_key(issued.key_id), "status") == b"revoked"
    with db() as session:
        changes = [(c.from_plan, c.to_plan, c.actor) for c in session.scalars(
            select(PlanChange).where(PlanChange.account_id == account_id).order_by(PlanChange.id))]
        actions = [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert changes == [(None, "pro", "admin"), ("pro", "enterprise", "ops@aihub")]
    assert actions == ["account.create", "key.issue", "subscription.plan", "account.status", "key.revoke"]
    assert int(after["version"]) == service.get_account(account_id)["version"] == 5


def test_policies_and_errors(service: AccountService) -> None:
    free = service.create_account("Free one", "free").account["id"]
    with pytest.raises(InvalidInput, match="pay-as-you-go"):
        service.set_overage(free, True)
    with pytest.raises(InvalidInput, match="custom quota"):
        service.set_custom_quota(free, 10)
    ent = service.create_account("Big", "enterprise").account["id"]
    with pytest.raises(InvalidInput, match="unlimited"):
        service.set_custom_quota(ent, 10)
    with pytest.raises(InvalidInput):
        service.create_account("x", "platinum")
    with pytest.raises(Conflict):
        service.create_account("again", "free", account_id=free)
    with pytest.raises(NotFound):
        service.set_plan("nosuchacct", "pro")
    with pytest.raises(NotFound):
        service.revoke_key(free, "nokey123")
    with pytest.raises(InvalidInput, match="future"):
        service.add_boost(free, 10, epoch("2020-01-01T00:00:00"))


def test_boosts_and_custom_quota_reach_the_projection(service: AccountService, r: redis.Redis) -> None:
    account_id = service.create_account("Pro", "pro").account["id"]
    service.set_custom_quota(account_id, 20_000)
    boost_id, change = service.add_boost(account_id, 500, service.clock() + 86400, price_minor=990)
    assert change.projected and change.account["boosts"][0]["price_minor"] == 990
    assert projected(r, account_id)["custom_quota"] == "20000"
    assert r.zrange(AccountKeys(account_id, 16).boosts, 0, -1) == [f"{boost_id}:500".encode()]
    service.set_plan(account_id, "free", now=True)    # Free allows neither custom quota nor overage
    assert projected(r, account_id)["custom_quota"] == ""


def test_upgrades_apply_at_once_and_downgrades_at_the_next_period(service: AccountService, r: redis.Redis,
                                                                  db: sessionmaker[Session]) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    clock.set("2028-11-20T09:30:00")
    account_id = service.create_account("Mover", "pro").account["id"]
    up = service.set_plan(account_id, "enterprise")
    assert up.account["subscription"]["plan"] == "enterprise" and projected(r, account_id)["plan"] == "enterprise"
    down = service.set_plan(account_id, "free").account["subscription"]
    assert (down["plan"], down["scheduled_plan"], down["scheduled_at"]) == ("enterprise", "free",
                                                                           "2028-12-01T00:00:00Z")
    assert projected(r, account_id)["plan"] == "enterprise"          # the limits stay until the period ends
    service.cancel_scheduled_change(account_id)
    assert service.get_account(account_id)["subscription"]["scheduled_plan"] is None
    service.cancel(account_id)
    assert service.apply_scheduled_changes() == []                  # not due yet
    clock.set("2028-12-01T00:00:05")
    assert service.apply_scheduled_changes() == [account_id]
    assert projected(r, account_id)["plan"] == "free"
    with db() as session:
        last = session.scalars(select(PlanChange).where(PlanChange.account_id == account_id)
                               .order_by(PlanChange.id.desc())).first()
    assert last is not None and (last.from_plan, last.to_plan) == ("enterprise", "free")
    assert last.at.replace(tzinfo=None).isoformat() == "2028-12-01T00:00:00"


def test_a_change_made_while_redis_is_down_is_saved_and_applied_by_resync(
        db: sessionmaker[Session], r: redis.Redis, catalog: Catalog, redis_server: RedisServer) -> None:
    clock = PinnedClock()
    service = AccountService(db, Projector(r, 16, clock), catalog, clock)
    account_id = service.create_account("Acme", "free").account["id"]
    redis_server.stop()
    try:
        change = service.set_plan(account_id, "pro")
        assert not change.projected and change.account["subscription"]["plan"] == "pro"
        issued, key_projected = service.issue_key(account_id, "while-down")
        assert not key_projected
    finally:
        redis_server.start()
    down_client = redis.Redis.from_url(redis_server.url)
    service = AccountService(db, Projector(down_client, 16, clock), catalog, clock)
    assert projected(down_client, account_id).get("plan") != "pro"   # a fresh server: nothing projected yet
    report = resync(db, service.projector)
    assert report.projected == 1
    assert projected(down_client, account_id)["plan"] == "pro"
    assert down_client.hget(AccountKeys(account_id, 16).api_key(issued.key_id), "status") == b"active"
    assert resync(db, service.projector).projected == 1                 # idempotent
    down_client.close()


def test_resync_reports_and_prunes_accounts_the_database_does_not_know(
        service: AccountService, r: redis.Redis, catalog: Catalog) -> None:
    from gateway.accounts import AccountStore
    known = service.create_account("Known", "pro").account["id"]
    ghost = AccountStore(r, catalog, 16).create_account("Ghost", "enterprise")
    report = resync(service.sessions, service.projector)
    assert report.orphans == [ghost] and r.exists(AccountKeys(ghost, 16).account)
    report = resync(service.sessions, service.projector, prune=True)
    assert report.orphans == [ghost] and not r.exists(AccountKeys(ghost, 16).account)
    assert r.exists(AccountKeys(known, 16).account)


def test_an_older_version_never_overwrites_a_newer_one(service: AccountService, r: redis.Redis) -> None:
    account_id = service.create_account("Racy", "free").account["id"]
    with service.sessions() as session:
        stale = load_account(session, account_id)
    service.set_plan(account_id, "enterprise")
    assert stale is not None and not service.projector.project(stale)   # version 1 < 2: skipped
    assert projected(r, account_id)["plan"] == "enterprise"


def _change_plans(url: str, redis_url: str, account_id: str, plans: list[str]) -> None:
    from billing.db.engine import make_engine, sessions
    from gateway.catalog import load_catalog
    from gateway.settings import ROOT
    engine = make_engine(url)
    client = redis.Redis.from_url(redis_url)
    service = AccountService(sessions(engine), Projector(client, 16), load_catalog(ROOT / "config" / "catalog.toml"))
    for plan in plans:
        service.set_plan(account_id, plan, actor=f"proc-{plans[0]}")
        service.set_overage(account_id, False)
    client.close()
    engine.dispose()


def test_two_processes_changing_one_account_leave_the_database_and_redis_equal(
        service: AccountService, r: redis.Redis, database_url: str, redis_url: str) -> None:
    import multiprocessing
    account_id = service.create_account("Contended", "free").account["id"]
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_change_plans, args=(database_url, redis_url, account_id, plans))
             for plans in (["pro", "enterprise"] * 15, ["enterprise", "free"] * 15)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    final = service.get_account(account_id)
    assert final["version"] == 1 + 2 * 60
    stored = projected(r, account_id)
    assert stored["plan"] == final["subscription"]["plan"] and int(stored["version"]) == final["version"]
    with service.sessions() as session:
        assert session.scalars(select(PlanChange).where(PlanChange.account_id == account_id)).all()[-1].to_plan \
            == final["subscription"]["plan"]


def test_resync_overwrites_a_version_the_database_never_had(service: AccountService, r: redis.Redis) -> None:
    """Redis kept from another database (or a restored backup) must not outrank the record."""
    account_id = service.create_account("Restored", "pro").account["id"]
    issued, _ = service.issue_key(account_id)
    keys = AccountKeys(account_id, 16)
    r.hset(keys.account, mapping={"version": "99", "plan": "enterprise"})
    r.hset(keys.api_key("oldkey01"), mapping={"sha256": "0" * 64, "status": "active"})
    r.sadd(keys.key_ids, "oldkey01")
    report = resync(service.sessions, service.projector)
    assert (report.projected, report.overwritten, report.newer_in_redis) == (0, 1, 0)
    assert projected(r, account_id)["plan"] == "pro" and projected(r, account_id)["version"] == "2"
    assert not r.exists(keys.api_key("oldkey01"))
    assert r.hget(keys.api_key(issued.key_id), "status") == b"active"
