"""Rebuild the monthly counters in Redis from ClickHouse after Redis lost data (`aihub resync --counters`).

`rebuild_counters` sums the period's `usage_rows FINAL` per account and model and raises each field of the
account's counters hash `{s:NN}:a:<acct>:q:<YYYY-MM>` (docs/redis-keys.md) to ClickHouse's value: a field is
never lowered, because Redis may hold settled usage the drain has not loaded yet. One small script per
account does the compare-and-raise atomically (a settle running at the same time is never overwritten); it
names only the account's counters hash, so it runs unchanged on a single Redis and on a Redis Cluster.
`reserved` (in-flight calls) is never touched.

Quota warning flags (`warn80`, `warn100`: "this warning was sent") are set, never cleared, when `used` has
reached 80% / 100% of the account's limit, so a rebuilt account is not warned a second time. The limit is
only known with a catalog: it is then computed as admit.lua does, from the projected account hash (plan,
custom quota) and the boosts active now, so run `resync` of the projection first. Without a catalog, or for
an account Redis does not know yet, or an unlimited plan, no flag is set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from billing_worker.clickhouse import ClickHouse
from billing_worker.periods import check_period
from billing_worker.settings import Settings
from billing_worker.usage_queries import FINAL_SETTINGS
from gateway.catalog import Catalog, load_catalog
from gateway.keys import AccountKeys
from gateway.quota.periods import DAY_S, period_of
from gateway.redis_client import text
from gateway.settings import Settings as GatewaySettings

TOTAL_FIELDS = ("used", "overage", "pt", "ct", "cached", "reasoning", "cost_nanos")
MODEL_FIELDS = ("calls", "pt", "ct")
WARN_LEVELS = (80, 100)

# KEYS[1] {s:NN}:a:<acct>:q:<period>   ARGV[1] EXPIREAT s   ARGV[2] limit in calls (-1: unknown or unlimited)
# ARGV[3..] field, value pairs: non-negative base-10 integers, compared as strings (no float rounding).
# Returns {used after the rebuild, fields raised, warning flags set}.
REBUILD_LUA = """
local function greater(a, b)
  if string.sub(b, 1, 1) == '-' then return true end
  if #a ~= #b then return #a > #b end
  return a > b
end
local raised = 0
for i = 3, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i]) or '0'
  if greater(ARGV[i + 1], current) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    raised = raised + 1
  end
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0') or 0
local limit = tonumber(ARGV[2])
local flagged = 0
if limit > 0 then
  for _, level in ipairs({80, 100}) do
    if used * 100 >= limit * level then
      flagged = flagged + redis.call('HSETNX', KEYS[1], 'warn' .. level, 1)
    end
  end
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return {used, raised, flagged}
"""


@dataclass
class _Totals:
    fields: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOTAL_FIELDS, 0))
    models: dict[str, dict[str, int]] = field(default_factory=dict)

    def pairs(self) -> list[str]:
        out: list[str] = []
        for name, value in self.fields.items():
            if value > 0:
                out += [name, str(value)]
        for model, values in sorted(self.models.items()):
            for name in MODEL_FIELDS:
                if values[name] > 0:
                    out += [f"m:{model}:{name}", str(values[name])]
        return out


def period_usage(ch: ClickHouse, period: str, accounts: Iterable[str] | None = None) -> dict[str, _Totals]:
    """The period's billed usage per account and model from `usage_rows FINAL` (unbilled rows count zero)."""
    params: dict[str, Any] = {"period": check_period(period)}
    where = "period = {period:String}"
    if accounts is not None:
        params["accts"] = sorted(set(accounts))
        if not params["accts"]:
            return {}
        where += " AND acct IN {accts:Array(String)}"
    sql = f"""
        SELECT acct, model, sum(calls) AS used, sum(overage) AS overage, sum(pt) AS pt, sum(ct) AS ct,
               sum(cached) AS cached, sum(reasoning) AS reasoning, sum(cost_nanos) AS cost_nanos
        FROM usage_rows FINAL
        WHERE {where}
        GROUP BY acct, model
        ORDER BY acct, model
        {FINAL_SETTINGS}"""
    out: dict[str, _Totals] = {}
    for row in ch.query_dicts(sql, params):
        totals = out.setdefault(str(row["acct"]), _Totals())
        for name in TOTAL_FIELDS:
            totals.fields[name] += int(row[name])
        totals.models[str(row["model"])] = {"calls": int(row["used"]), "pt": int(row["pt"]), "ct": int(row["ct"])}
    return out


def account_limit(client: Any, keys: AccountKeys, catalog: Catalog, now_s: float) -> int:
    """The account's monthly limit in calls as admit.lua computes it (plan or custom quota, plus the boosts
    active at `now_s`); -1 when unlimited or unknown (no projected account hash, plan not in the catalog)."""
    plan_name, custom = client.hmget(keys.account, ["plan", "custom_quota"])
    if plan_name is None:
        return -1
    plan = catalog.plans.get(text(plan_name))
    if plan is None or plan.unlimited_calls:
        return -1
    limit = plan.included_calls
    if plan.custom_quota and custom not in (None, b"", ""):
        limit = int(text(custom))
    for member in client.zrangebyscore(keys.boosts, f"({int(now_s * 1000)}", "+inf"):
        limit += int(text(member).rsplit(":", 1)[1])
    return limit


def rebuild_counters(ch: ClickHouse, client: Any, period_name: str, shards: int, expire_at_s: int,
                     accounts: Iterable[str] | None = None, *, catalog: Catalog | None = None,
                     now_s: float | None = None) -> dict[str, Any]:
    """Raises every account's counters of `period_name` to at least ClickHouse's sums (see the module doc).

    `accounts`: only these (default: every account with usage rows in the period). `catalog`: compute each
    account's limit to set the warning flags (none without it). Returns a report: `period`, `accounts`
    (counters hashes rebuilt), `calls` (ClickHouse's billed calls over them), `fields_raised` (fields set
    higher than Redis held), `accounts_raised`, `redis_ahead` (accounts whose `used` in Redis stayed above
    ClickHouse's: usage not drained yet), `warnings_flagged`."""
    usage = period_usage(ch, period_name, accounts)
    script = client.register_script(REBUILD_LUA)
    now = time.time() if now_s is None else now_s
    report: dict[str, Any] = {"period": period_name, "accounts": 0, "calls": 0, "fields_raised": 0,
                              "accounts_raised": 0, "redis_ahead": 0, "warnings_flagged": 0}
    for acct, totals in usage.items():
        pairs = totals.pairs()
        if not pairs:
            continue                      # only unbilled rows: settle never created counters for them
        keys = AccountKeys(acct, shards)
        limit = account_limit(client, keys, catalog, now) if catalog is not None else -1
        used, raised, flagged = script(keys=[keys.quota(period_name)], args=[expire_at_s, limit, *pairs])
        report["accounts"] += 1
        report["calls"] += totals.fields["used"]
        report["fields_raised"] += int(raised)
        report["accounts_raised"] += 1 if int(raised) else 0
        report["redis_ahead"] += 1 if int(used) > totals.fields["used"] else 0
        report["warnings_flagged"] += int(flagged)
    return report


def rebuild_all_counters(environ: Mapping[str, str] | None = None, *, now_s: float | None = None) -> dict[str, Any]:
    """`aihub resync --counters`: rebuilds every account's counters of the current UTC period.

    Reads the worker's settings (REDIS_URL, REDIS_CLUSTER, CLICKHOUSE_URL, AIHUB_SHARDS) and the gateway's
    (AIHUB_CATALOG, AIHUB_PERIOD_GRACE_DAYS) from `environ` (default: the process environment); the caller
    resolves a running `make up` first (gateway.runtime.stack_environ). Embedded chDB opens only in one
    process: with `make up` running on chDB, run this inside that process or stop it first."""
    settings = Settings.from_env(environ)
    gateway_settings = GatewaySettings.from_env(environ)
    now = time.time() if now_s is None else now_s
    period = period_of(now)
    expire_at_s = period.end_s + gateway_settings.period_grace_days * DAY_S
    catalog = load_catalog(gateway_settings.catalog_path)
    client = settings.redis_client()
    try:
        with ClickHouse(settings.clickhouse_url) as ch:
            return rebuild_counters(ch, client, period.name, settings.shards, expire_at_s,
                                    catalog=catalog, now_s=now)
    finally:
        client.close()
