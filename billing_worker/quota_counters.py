"""The current period from the gateway's Redis counters (`{s:NN}:a:<acct>:q:<YYYY-MM>`).

These are live (updated by admit/settle on every request); ClickHouse lags by the drain interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import redis

from billing_worker.errors import StreamError
from billing_worker.money import nanos_to_decimal
from billing_worker.periods import check_period
from gateway.keys import AccountKeys
from gateway.redis_client import text

TOTAL_FIELDS = ("used", "reserved", "overage", "pt", "ct", "cached", "reasoning", "cost_nanos")


@dataclass(frozen=True)
class ModelCounters:
    calls: int = 0
    pt: int = 0
    ct: int = 0


@dataclass(frozen=True)
class CurrentUsage:
    acct: str
    period: str
    used: int = 0
    reserved: int = 0
    overage: int = 0
    pt: int = 0
    ct: int = 0
    cached: int = 0
    reasoning: int = 0
    cost_nanos: int = 0  # list cost so far (settle.lua keeps it beside the documented fields)
    models: dict[str, ModelCounters] = field(default_factory=dict)

    @property
    def cost(self) -> Decimal:
        return nanos_to_decimal(self.cost_nanos)



def _int(value: bytes | str | None) -> int:
    try:
        return int(float(text(value))) if value is not None else 0
    except ValueError:
        return 0


def current_usage(client: redis.Redis | redis.RedisCluster, acct: str, period: str, shards: int) -> CurrentUsage:
    """Counters of one account and period; zeros when the account has no traffic in it yet."""
    try:
        raw = client.hgetall(AccountKeys(acct, shards).quota(check_period(period)))
    except redis.RedisError as exc:
        raise StreamError(f"Redis unavailable reading the counters of {acct}: {exc}") from None
    fields = {text(k): v for k, v in dict(raw).items()}
    per_model: dict[str, dict[str, int]] = {}
    for name, value in fields.items():
        if name.startswith("m:"):
            model, _, metric = name[2:].rpartition(":")  # model names may contain ':'
            if model and metric in ("calls", "pt", "ct"):
                per_model.setdefault(model, {})[metric] = _int(value)
    return CurrentUsage(acct, period, **{f: _int(fields.get(f)) for f in TOTAL_FIELDS},
                        models={m: ModelCounters(**c) for m, c in sorted(per_model.items())})
