"""Accounts, API keys, plans, custom quotas and boosts in Redis (the admin CLI and API use this)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from gateway.catalog import Catalog, Plan
from gateway.errors import InvalidRequest, NotFound
from gateway.keys import ACCOUNTS_SET, ID_RE, AccountKeys, hash_api_key, new_api_key, new_id
from gateway.quota.periods import Clock
from gateway.redis_client import text


@dataclass(frozen=True)
class IssuedKey:
    account_id: str
    key_id: str
    api_key: str   # shown once; only its SHA-256 is stored


class AccountStore:
    def __init__(self, client: redis.Redis, catalog: Catalog, shards: int, clock: Clock = time.time) -> None:
        self.client = client
        self.catalog = catalog
        self.shards = shards
        self.clock = clock   # the gateway's clock: whether a boost ends in the future

    def keys(self, account_id: str) -> AccountKeys:
        return AccountKeys(account_id, self.shards)

    def _require(self, account_id: str) -> AccountKeys:
        keys = self.keys(account_id)
        if not ID_RE.match(account_id) or not self.client.exists(keys.account):
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        return keys

    def _check_plan(self, plan: str) -> None:
        if plan not in self.catalog.plans:
            raise InvalidRequest(f"Unknown plan {plan!r}; the catalog has {', '.join(self.catalog.plans)}.",
                                 code="unknown_plan")

    def create_account(self, name: str, plan: str, *, country: str = "US", account_id: str | None = None,
                       overage: bool = False) -> str:
        self._check_plan(plan)
        account_id = account_id or new_id()
        if not ID_RE.match(account_id):
            raise InvalidRequest("Account ids are 4 to 32 lowercase letters or digits.", code="bad_account_id")
        keys = self.keys(account_id)
        created = self.client.hsetnx(keys.account, "plan", plan)
        if not created:
            raise InvalidRequest(f"Account {account_id!r} exists already.", code="account_exists")
        self.client.hset(keys.account, mapping={
            "status": "active", "custom_quota": "", "overage": "1" if overage else "0",
            "currency": self.catalog.currency, "country": country.upper(), "name": name,
            "created_ms": str(int(time.time() * 1000))})
        self.client.sadd(ACCOUNTS_SET, account_id)
        return account_id

    def get_account(self, account_id: str) -> dict[str, str]:
        keys = self._require(account_id)
        raw = self.client.hgetall(keys.account)
        return {text(k): text(v) for k, v in raw.items()} | {"id": account_id}

    def list_accounts(self) -> list[str]:
        return sorted(text(a) for a in self.client.smembers(ACCOUNTS_SET))

    def issue_key(self, account_id: str, name: str = "default") -> IssuedKey:
        keys = self._require(account_id)
        key_id = new_id(8)
        api_key = new_api_key(account_id, key_id)
        self.client.hset(keys.api_key(key_id), mapping={
            "sha256": hash_api_key(api_key), "status": "active", "name": name,
            "created_ms": str(int(time.time() * 1000))})
        self.client.sadd(keys.key_ids, key_id)
        return IssuedKey(account_id, key_id, api_key)

    def revoke_key(self, account_id: str, key_id: str) -> None:
        keys = self._require(account_id)
        if not self.client.sismember(keys.key_ids, key_id):
            raise NotFound(f"No key {key_id!r} on account {account_id!r}.", code="key_not_found")
        self.client.hset(keys.api_key(key_id), "status", "revoked")

    def list_keys(self, account_id: str) -> list[dict[str, str]]:
        keys = self._require(account_id)
        result = []
        for key_id in sorted(text(k) for k in self.client.smembers(keys.key_ids)):
            raw = self.client.hgetall(keys.api_key(key_id))
            result.append({"id": key_id, "name": text(raw.get(b"name", b"")),
                           "status": text(raw.get(b"status", b"")), "created_ms": text(raw.get(b"created_ms", b""))})
        return result

    def set_plan(self, account_id: str, plan: str) -> None:
        keys = self._require(account_id)
        self._check_plan(plan)
        self.client.hset(keys.account, "plan", plan)

    def set_status(self, account_id: str, status: str) -> None:
        if status not in ("active", "suspended"):
            raise InvalidRequest("Status is active or suspended.", code="bad_status")
        self.client.hset(self._require(account_id).account, "status", status)

    def _plan_of(self, account_id: str) -> Plan:
        name = self.get_account(account_id).get("plan", "")
        plan = self.catalog.plans.get(name)
        if plan is None:
            raise InvalidRequest(f"Account {account_id!r} is on plan {name!r}, which is not in the catalog.",
                                 code="unknown_plan")
        return plan

    def set_custom_quota(self, account_id: str, calls: int | None) -> None:
        """A custom monthly calls quota (None: the plan's); refused where the plan has no quota to change."""
        keys = self._require(account_id)
        plan = self._plan_of(account_id)
        if calls is not None and plan.unlimited_calls:
            raise InvalidRequest(f"The {plan.display_name} plan has unlimited calls; a custom quota does not "
                                 "apply to it.", code="custom_quota_not_allowed")
        if calls is not None and not plan.custom_quota:
            raise InvalidRequest(f"The {plan.display_name} plan does not allow a custom quota.",
                                 code="custom_quota_not_allowed")
        if calls is not None and calls < 0:
            raise InvalidRequest("A custom quota is a number of calls, zero or more.", code="bad_quota")
        self.client.hset(keys.account, "custom_quota", "" if calls is None else str(calls))

    def set_overage(self, account_id: str, enabled: bool) -> None:
        """Pay-as-you-go overage on or off; on is refused unless the plan offers it (`payg_optional`)."""
        keys = self._require(account_id)
        if enabled:
            plan = self._plan_of(account_id)
            if plan.overage == "hard":
                raise InvalidRequest(f"The {plan.display_name} plan has no pay-as-you-go overage: calls past its "
                                     "quota are refused. Change the plan to one that offers it.",
                                     code="overage_not_allowed")
            if plan.overage == "unlimited":
                raise InvalidRequest(f"The {plan.display_name} plan has unlimited calls; there is no overage "
                                     "to enable.", code="overage_not_allowed")
        self.client.hset(keys.account, "overage", "1" if enabled else "0")

    def add_boost(self, account_id: str, calls: int, until_s: float) -> str:
        keys = self._require(account_id)
        if calls <= 0:
            raise InvalidRequest("A boost adds a positive number of calls.", code="bad_boost")
        if until_s <= self.clock():
            raise InvalidRequest("A boost must end in the future.", code="bad_boost")
        boost_id = new_id(8)
        self.client.zadd(keys.boosts, {f"{boost_id}:{calls}": int(until_s * 1000)})
        return boost_id
