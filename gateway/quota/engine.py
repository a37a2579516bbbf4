"""The decision: admit a request or refuse it, settle it afterwards, and the Redis-down policy."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import OrderedDict
from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway import errors
from gateway.catalog import Catalog, Model
from gateway.keys import AccountKeys, ParsedKey
from gateway.metrics import ADMIT_LATENCY, DECISIONS, REDIS_ERRORS, SETTLE_ERRORS
from gateway.quota.admission import Admission, Usage
from gateway.quota.batcher import Coalescer, ScriptBatcher
from gateway.quota.cluster_batcher import ClusterBatcher
from gateway.quota.periods import DAY_S, Clock, Period, PeriodCache, system_clock
from gateway.quota.scripts import register_all
from gateway.quota.spool import Spool
from gateway.redis_client import text
from gateway.settings import Settings

log = logging.getLogger("aihub.quota")
DONE_TTL_S = 7 * DAY_S
OUTCOMES = ("admitted", "bad_key", "account_inactive", "model_refused", "rate_limited", "quota_exhausted",
            "duplicate", "unknown_plan", "too_many_calls", "max_tokens_refused")   # by admit.lua's reply code


class QuotaEngine:
    def __init__(self, settings: Settings, catalog: Catalog, client: Any, spool: Spool,
                 clock: Clock = system_clock) -> None:
        self.settings = settings
        self.catalog = catalog
        self.client = client
        self.spool = spool
        self.clock = clock
        self.scripts = register_all(client)
        self.batcher: Coalescer = (
            ClusterBatcher(client, settings.redis_url, settings.redis_timeout_s) if settings.redis_cluster
            else ScriptBatcher(client, settings.redis_url, timeout_s=settings.redis_timeout_s))
        self.periods = PeriodCache()
        self.plans_arg = catalog.plans_arg().encode()   # bytes: packed as is on every admit
        self.grace_s = settings.period_grace_days * DAY_S
        self._verified: OrderedDict[str, float] = OrderedDict()   # sha256 -> last verified (fail-open)
        self._account_keys: dict[str, AccountKeys] = {}
        self._decisions = {name: DECISIONS.labels(name) for name in (*OUTCOMES, "admitted_degraded",
                                                                      "backend_unavailable")}

    def account_keys(self, account_id: str) -> AccountKeys:
        keys = self._account_keys.get(account_id)
        if keys is None:
            if len(self._account_keys) > 100_000:
                self._account_keys.clear()
            keys = self._account_keys[account_id] = AccountKeys(account_id, self.settings.shards)
        return keys

    # -- admit ---------------------------------------------------------------------------------------
    async def admit(self, key: ParsedKey, model: Model | None, rid: str, billable: bool, calls: int = 1,
                    max_tokens: int = 0) -> Admission:
        """Admits one request asking for `calls` model calls (n x prompts) and at most `max_tokens` output
        tokens (0 = not given), or raises the GatewayError the client is told (401, 403, 400, 429, 503)."""
        now = self.clock()
        now_ms = int(now * 1000)
        period = self.periods.at(now)
        keys = self.account_keys(key.account_id)
        admission = Admission(rid=rid, key=key, keys=keys, period=period, ts_start_ms=now_ms,
                              billable=billable, model=model.name if model else "",
                              upstream=model.upstream if model else "", calls=calls if billable else 0)
        details = f"{key.key_id}|{admission.model}|{admission.upstream}|{period.name}|{now_ms}"
        started = time.perf_counter()
        try:
            reply = await self.batcher.call(
                self.scripts["admit"],
                [keys.account, keys.api_key(key.key_id), keys.quota(period.name), keys.buckets,
                 keys.boosts, keys.reservations, keys.reservation_data],
                [key.sha256, key.key_id, model.tier if model else "", rid, now_ms, self.plans_arg,
                 now_ms + self.settings.reservation_ttl_s * 1000, period.end_s + self.grace_s,
                 "1" if billable else "0", details, calls, max_tokens])
        except (RedisError, OSError) as exc:
            return self._redis_down(admission, exc)
        finally:
            ADMIT_LATENCY.observe(time.perf_counter() - started)
        return self._decide(admission, reply, period, now)

    def _decide(self, admission: Admission, reply: list[Any], period: Period, now: float) -> Admission:
        code = int(reply[0])
        self._decisions[OUTCOMES[code]].inc()
        if code == 0:
            admission.plan = text(reply[1])
            admission.limit, admission.remaining = int(reply[2]), int(reply[3])
            admission.burst, admission.rate_remaining, admission.rate_reset_ms, admission.rpm, admission.used = (
                int(reply[4]), int(reply[5]), int(reply[6]), int(reply[7]), int(reply[8]))
            self._remember_verified(admission.key.sha256, now)
            return admission
        if code == 1:
            raise errors.Unauthorized("Incorrect API key provided, or the key was revoked.")
        if code == 2:
            raise errors.PermissionDenied(f"The account is {text(reply[1])}; requests are refused.",
                                          code="account_inactive")
        if code == 3:
            raise errors.PermissionDenied(
                f"The model `{admission.model}` is not available on the {text(reply[1])} plan.",
                param="model")
        if code == 4:
            retry_s = max(1, math.ceil(int(reply[2]) / 1000))
            raise errors.RateLimited(
                f"Rate limit reached for requests per {text(reply[1])}: {int(reply[4])} per minute, bursts of "
                f"{int(reply[3])}. Try again in {retry_s}s.",
                headers={"retry-after": str(retry_s), "x-ratelimit-limit-requests": str(int(reply[3])),
                         "x-ratelimit-remaining-requests": "0",
                         "x-ratelimit-reset-requests": f"{int(reply[5]) / 1000:.3f}s"})
        if code == 5:
            plan_name, limit, used, calls = text(reply[1]), int(reply[2]), int(reply[3]), int(reply[4])
            retry_s = max(1, period.end_s - int(now))
            asked = f"; this request asks for {calls} calls" if calls > 1 else ""
            raise errors.QuotaExceeded(
                f"Monthly quota of {limit} calls on the {plan_name} plan is used up ({used} used{asked}); it "
                f"resets at the start of the next month (in {retry_s}s). {self._quota_advice(plan_name)}",
                headers={"retry-after": str(retry_s), "x-quota-limit": str(limit),
                         "x-quota-remaining": str(max(0, limit - used)), "x-quota-reset": period.reset_iso})
        if code == 6:
            raise errors.InvalidRequest("Duplicate request id.", code="duplicate_request_id")
        if code == 8:
            raise errors.InvalidRequest(
                f"This request asks for {admission.calls} calls (n x prompts); the {text(reply[1])} plan allows "
                f"at most {int(reply[2])} in one request.", code="too_many_calls", param="n")
        if code == 9:
            raise errors.InvalidRequest(
                f"The output-token limit asked for is above the {text(reply[1])} plan's cap of {int(reply[2])} "
                "tokens.", code="max_tokens_above_plan_cap", param="max_tokens")
        raise errors.ServiceUnavailable(f"Plan {text(reply[1])!r} is not in this gateway's catalog.",
                                        code="unknown_plan")

    def _quota_advice(self, plan_name: str) -> str:
        plan = self.catalog.plans.get(plan_name)
        if plan is not None and plan.overage == "payg_optional":
            return "Enable pay-as-you-go overage, upgrade the plan or ask for a temporary boost."
        return "Upgrade the plan or ask for a temporary boost."

    # -- Redis unavailable: the one place where the policy is applied --------------------------------
    def _redis_down(self, admission: Admission, exc: BaseException) -> Admission:
        REDIS_ERRORS.labels(type(exc).__name__).inc()
        verified_at = self._verified.get(admission.key.sha256)
        fresh = verified_at is not None and self.clock() - verified_at < 3600
        if self.settings.redis_failure_policy == "open" and fresh:
            self._decisions["admitted_degraded"].inc()
            admission.degraded = True
            admission.plan = "unknown"
            return admission
        self._decisions["backend_unavailable"].inc()
        log.warning("quota backend unavailable: %s", exc)
        raise errors.ServiceUnavailable(
            "The quota service is temporarily unavailable; the request was not sent. Retry shortly.",
            code="quota_backend_unavailable", headers={"retry-after": "1"})

    def _remember_verified(self, sha256: str, now: float) -> None:
        if self.settings.redis_failure_policy != "open":
            return
        self._verified[sha256] = now
        self._verified.move_to_end(sha256)
        if len(self._verified) > 100_000:
            self._verified.popitem(last=False)

    # -- settle --------------------------------------------------------------------------------------
    def settle_args(self, admission: Admission, usage: Usage, now_ms: int) -> tuple[list[str], list[Any]]:
        keys = admission.keys
        return (
            [keys.quota(admission.period.name), keys.reservations, keys.reservation_data,
             keys.done_prefix + admission.rid, keys.usage, keys.notify],
            [admission.rid, "1" if usage.billable else "0", usage.outcome, usage.status,
             usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens,
             usage.cost_nanos, usage.latency_ms, now_ms, DONE_TTL_S, admission.key.account_id,
             admission.key.key_id, admission.plan, admission.model, admission.upstream,
             admission.period.name, admission.ts_start_ms, admission.limit,
             admission.period.end_s + self.grace_s, admission.calls])

    def settle_soon(self, admission: Admission, usage: Usage,
                    settled: asyncio.Future[None] | None = None) -> None:
        """Queues the settle for the next round trip, off the response's critical path. If Redis cannot
        take it, the settle goes to the spool and is replayed later. `settled` (optional) is resolved once
        Redis answered or the settle was spooled; it never fails."""
        if admission.settled:
            if settled is not None:
                settled.set_result(None)
            return
        admission.settled = True
        keys, args = self.settle_args(admission, usage, int(self.clock() * 1000))
        self.batcher.submit(self.scripts["settle"], keys, args, functools.partial(self._settled, keys, args, settled))

    def _settled(self, keys: list[str], args: list[Any], settled: asyncio.Future[None] | None, reply: Any,
                 exc: BaseException | None) -> None:
        try:
            if exc is not None:
                self._settle_failed(keys, args, exc)
        finally:
            if settled is not None and not settled.done():
                settled.set_result(None)

    def _settle_failed(self, keys: list[str], args: list[Any], exc: BaseException) -> None:
        if type(exc) is ResponseError:      # a plain error reply: the script refused these arguments;
            SETTLE_ERRORS.inc()             # LOADING, READONLY, OOM, ... are subclasses and are retried
            log.error("settle refused by Redis (%s): %s", exc, args)
            self.spool.append_rejected(keys, args, str(exc))
            return
        REDIS_ERRORS.labels(type(exc).__name__).inc()
        self.spool.append(keys, args)

    async def settle(self, admission: Admission, usage: Usage) -> None:
        """Settles now and waits for the outcome (the reaper and tests); failures are spooled likewise."""
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.settle_soon(admission, usage, settled)
        await settled

    async def replay_spool(self) -> int:
        """Replays spooled settles once Redis answers; exactly once thanks to settle's done marker."""
        async def send(keys: list[str], args: list[Any]) -> None:
            await self.batcher.call(self.scripts["settle"], keys, args)
        return await self.spool.replay(send)

    async def close(self) -> None:
        """Flushes every queued settle, gives the spool one last replay (settles Redis could not take
        earlier; what still fails stays spooled for the next start), then closes the connection."""
        await self.batcher.drain()
        if self.spool.pending:
            try:
                replayed = await self.replay_spool()
            except (RedisError, OSError) as exc:
                log.warning("spooled settles stay spooled: Redis not reachable (%s)", exc)
            else:
                log.info("replayed %d spooled settle(s) before closing", replayed)
        await self.batcher.close()
