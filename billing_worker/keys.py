"""Redis key names the billing worker reads, exactly as docs/redis-keys.md defines them.

The contract says `gateway.keys` is the one module that builds key names; until it lands, these
helpers mirror it (same crc32 sharding) and should be replaced by imports from `gateway.keys`.
"""

from __future__ import annotations

import zlib

USAGE_GROUP_DEFAULT = "drain"


def shard_of(acct: str, shards: int) -> int:
    """Shard number of an account: crc32 of its UTF-8 id modulo the shard count."""
    return zlib.crc32(acct.encode()) % shards


def shard_tag(shard: int) -> str:
    return f"{{s:{shard:02d}}}"


def usage_stream(shard: int) -> str:
    return f"{shard_tag(shard)}:usage"


def dead_letter_stream(shard: int) -> str:
    """Entries the drain could not load, with the original fields plus `reason` (same slot as the source)."""
    return f"{shard_tag(shard)}:usage:dead"


def usage_streams(shards: int) -> list[str]:
    return [usage_stream(n) for n in range(shards)]


def dead_letter_for(stream: str) -> str:
    return f"{stream}:dead"


def quota_hash(acct: str, period: str, shards: int) -> str:
    """Monthly counters of an account: `used`, `reserved`, tokens and `m:<model>:*` fields."""
    return f"{shard_tag(shard_of(acct, shards))}:a:{acct}:q:{period}"
