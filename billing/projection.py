"""The Redis projection of the system of record: what admit.lua reads (account hash, API key hashes, boosts).

`Projector.project(account)` writes one account's whole state through lua/project_account.lua, guarded by the
account's version, so it is idempotent and safe under concurrent writers. `resync()` projects every account:
it rebuilds Redis after a flush or an outage, and applies changes made while Redis was unreachable.
The monthly counters are not part of the projection: billing_worker.counters rebuilds them from ClickHouse.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from billing.db.models import Account
from billing.errors import StoreUnavailable
from gateway.keys import ACCOUNTS_SET, AccountKeys
from gateway.quota.scripts import read_sources
from gateway.redis_client import text


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


class Projector:
    def __init__(self, client: Any, shards: int, clock: Any = time.time, restricted_plan: str = "free") -> None:
        self.restricted_plan = restricted_plan    # what an account restricted by dunning gets (billing.dunning)
        self.client = client
        self.shards = shards
        self.clock = clock
        self.script = client.register_script(read_sources()["project_account"])

    def project(self, account: Account, force: bool = False) -> bool:
        """Writes `account` (loaded with subscription, keys and boosts); False when Redis holds a newer version.
        Raises StoreUnavailable when Redis cannot be reached (the change stays in the database: resync applies it)."""
        keys = AccountKeys(account.id, self.shards)
        sub = account.subscription
        fields = {"plan": self.restricted_plan if sub.restricted else sub.plan, "status": account.status,
                  "custom_quota": "" if sub.custom_quota is None else str(sub.custom_quota),
                  "overage": "1" if sub.overage_enabled else "0", "currency": account.currency,
                  "country": account.country, "name": account.name, "created_ms": str(_ms(account.created_at))}
        now_ms = int(self.clock() * 1000)
        try:
            existing = {text(k) for k in self.client.smembers(keys.key_ids)}
            in_db = {k.id for k in account.keys}
            key_names = [keys.api_key(k.id) for k in account.keys]
            args: list[Any] = [f"{account.version}!" if force else account.version, len(fields)]
            for name, value in fields.items():
                args += [name, value]
            for key in account.keys:
                args += [key.id, key.sha256, "revoked" if key.revoked_at else "active", key.name,
                         _ms(key.created_at)]
            for stale in sorted(existing - in_db):             # in Redis, unknown to the database: removed
                key_names.append(keys.api_key(stale))
                args += [stale, "", "", "", 0]
            boosts = [b for b in account.boosts if _ms(b.until) > now_ms]
            args.append(len(boosts))
            for boost in boosts:
                args += [f"{boost.id}:{boost.calls}", _ms(boost.until)]
            written = bool(self.script(keys=[keys.account, keys.key_ids, keys.boosts, *key_names], args=args))
            self.client.sadd(ACCOUNTS_SET, account.id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis is not reachable ({type(exc).__name__}); the change is saved and "
                                   "`aihub resync` applies it when Redis is back.", code="projection_pending") from None
        return written

    def remove(self, account_id: str) -> None:
        """Takes an account the database does not know out of the hot path (admit then answers 401/403)."""
        keys = AccountKeys(account_id, self.shards)
        for key_id in self.client.smembers(keys.key_ids):
            self.client.delete(keys.api_key(text(key_id)))
        self.client.delete(keys.account, keys.key_ids, keys.boosts)
        self.client.srem(ACCOUNTS_SET, account_id)


def load_account(session: Session, account_id: str) -> Account | None:
    return session.scalars(select(Account).where(Account.id == account_id).options(
        selectinload(Account.subscription), selectinload(Account.keys), selectinload(Account.boosts))).first()


def _all_accounts(sessions: sessionmaker[Session], batch: int = 500) -> Iterator[Account]:
    after = ""
    while True:
        with sessions() as session:
            rows = list(session.scalars(select(Account).where(Account.id > after).order_by(Account.id).limit(batch)
                                        .options(selectinload(Account.subscription), selectinload(Account.keys),
                                                 selectinload(Account.boosts))))
        if not rows:
            return
        yield from rows
        after = rows[-1].id


@dataclass
class ResyncReport:
    projected: int = 0
    newer_in_redis: int = 0          # changed while resync ran: the newer change projected itself
    overwritten: int = 0             # Redis held a version the database never had (another database, a backup)
    orphans: list[str] = field(default_factory=list)    # in Redis, not in the database
    pruned: bool = False


def resync(sessions: sessionmaker[Session], projector: Projector, prune: bool = False) -> ResyncReport:
    """Projects every account of the database into Redis (idempotent). Accounts found in Redis but not in the
    database are reported, and removed from Redis with `prune`."""
    report = ResyncReport(pruned=prune)
    known: set[str] = set()
    for account in _all_accounts(sessions):
        known.add(account.id)
        if projector.project(account):
            report.projected += 1
            continue
        with sessions() as session:       # Redis holds a higher version: a concurrent change, or not ours
            fresh = load_account(session, account.id)
        if fresh is not None and fresh.version == account.version:
            projector.project(fresh, force=True)          # the database never had it: the record wins
            report.overwritten += 1
        else:
            report.newer_in_redis += 1
    try:
        in_redis = {text(a) for a in projector.client.smembers(ACCOUNTS_SET)}
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis is not reachable ({type(exc).__name__}).") from None
    report.orphans = sorted(in_redis - known)
    if prune:
        for account_id in report.orphans:
            projector.remove(account_id)
    return report
