"""Reads the client's API key from the request; keys are checked by admit.lua (or AuthCache)."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError

from gateway.errors import PermissionDenied, ServiceUnavailable, Unauthorized
from gateway.keys import AccountKeys, ParsedKey, parse_api_key


def presented_key(headers: Any) -> ParsedKey:
    header = headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer sk-ah_...'.")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Malformed Authorization header; expected 'Bearer <API key>'.")
    parsed = parse_api_key(token.strip())
    if parsed is None:
        raise Unauthorized("Incorrect API key provided, or the key was revoked.")
    return parsed


class AuthCache:
    """Key checks for the quota-checks-off mode: one lookup per key per `ttl_s`, no admit or settle."""

    def __init__(self, client: Any, shards: int, ttl_s: float = 30.0) -> None:
        self.client = client
        self.shards = shards
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str]] = {}

    async def plan_of(self, key: ParsedKey) -> str:
        now = time.monotonic()
        hit = self._cache.get(key.sha256)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        keys = AccountKeys(key.account_id, self.shards)
        try:
            sha, status = await self.client.hmget(keys.api_key(key.key_id), "sha256", "status")
            plan, account_status = await self.client.hmget(keys.account, "plan", "status")
        except (RedisError, OSError):
            raise ServiceUnavailable("The key service is temporarily unavailable. Retry shortly.",
                                     code="quota_backend_unavailable", headers={"retry-after": "1"}) from None
        if sha is None or sha.decode() != key.sha256 or status != b"active":
            raise Unauthorized("Incorrect API key provided, or the key was revoked.")
        if account_status != b"active" or plan is None:
            raise PermissionDenied("The account is not active; requests are refused.", code="account_inactive")
        plan_name = str(plan.decode())
        self._cache[key.sha256] = (now, plan_name)
        return plan_name
