"""Redis key names the billing worker uses, taken from `gateway.keys` (the one module that spells them).

The only name added here is the worker's own dead-letter stream; it belongs in `gateway.keys` and
docs/redis-keys.md too (the billing worker does not edit the gateway package).
"""

from __future__ import annotations

from gateway.keys import AccountKeys, shard_of, shard_tag, usage_stream

__all__ = ["dead_letter_for", "dead_letter_stream", "quota_hash", "shard_of", "shard_tag", "usage_stream",
           "usage_streams"]


def usage_streams(shards: int) -> list[str]:
    """Every shard's usage stream, `{s:00}:usage` .. `{s:NN}:usage`."""
    return [usage_stream(n) for n in range(shards)]


def dead_letter_for(stream: str) -> str:
    """`{s:NN}:usage:dead`: entries the drain could not load, original fields plus `reason` (same slot)."""
    return f"{stream}:dead"


def dead_letter_stream(shard: int) -> str:
    return dead_letter_for(usage_stream(shard))


def quota_hash(acct: str, period: str, shards: int) -> str:
    """Monthly counters of an account: `used`, `reserved`, tokens and `m:<model>:*` fields."""
    return AccountKeys(acct, shards).quota(period)
