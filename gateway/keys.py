"""Redis key names and API key format; the only place that spells them (see docs/redis-keys.md)."""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass
from functools import cached_property

API_KEY_RE = re.compile(r"^sk-ah_([a-z0-9]{4,32})_([a-z0-9]{4,32})_([A-Za-z0-9]{24,64})$")
ID_RE = re.compile(r"^[a-z0-9]{4,32}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
ACCOUNTS_SET = "aihub:accounts"


def shard_of(account_id: str, shards: int) -> int:
    return zlib.crc32(account_id.encode()) % shards


def shard_tag(shard: int) -> str:
    return f"{{s:{shard:02d}}}"


def usage_stream(shard: int) -> str:
    return f"{shard_tag(shard)}:usage"


def usage_streams(shards: int) -> list[str]:
    """Every shard's usage stream, `{s:00}:usage` .. `{s:NN}:usage` (what the drain reads)."""
    return [usage_stream(n) for n in range(shards)]


def dead_letter_for(stream: str) -> str:
    """`{s:NN}:usage:dead`: entries the drain could not load, original fields plus `reason` (same slot)."""
    return f"{stream}:dead"


def dead_letter_stream(shard: int) -> str:
    return dead_letter_for(usage_stream(shard))


def notify_stream(shard: int) -> str:
    return f"{shard_tag(shard)}:notify"


@dataclass(frozen=True)
class AccountKeys:
    """Key names of one account; all share the account's shard hash tag (computed once per instance)."""

    account_id: str
    shards: int

    @cached_property
    def shard(self) -> int:
        return shard_of(self.account_id, self.shards)

    @cached_property
    def prefix(self) -> str:
        return f"{shard_tag(self.shard)}:a:{self.account_id}"

    @cached_property
    def account(self) -> str:
        return f"{self.prefix}:acct"

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}:key:{key_id}"

    @cached_property
    def key_ids(self) -> str:
        return f"{self.prefix}:keys"

    @cached_property
    def boosts(self) -> str:
        return f"{self.prefix}:boosts"

    def quota(self, period: str) -> str:
        return f"{self.prefix}:q:{period}"

    @cached_property
    def buckets(self) -> str:
        return f"{self.prefix}:tb"

    @cached_property
    def reservations(self) -> str:
        return f"{self.prefix}:res"

    @cached_property
    def reservation_data(self) -> str:
        return f"{self.prefix}:resd"

    @cached_property
    def done_prefix(self) -> str:
        return f"{self.prefix}:done:"

    @cached_property
    def usage(self) -> str:
        return usage_stream(self.shard)

    @cached_property
    def notify(self) -> str:
        return notify_stream(self.shard)


@dataclass(frozen=True)
class ParsedKey:
    account_id: str
    key_id: str
    sha256: str


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def parse_api_key(api_key: str) -> ParsedKey | None:
    match = API_KEY_RE.match(api_key)
    if match is None:
        return None
    return ParsedKey(account_id=match.group(1), key_id=match.group(2), sha256=hash_api_key(api_key))


def new_id(length: int = 10) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_api_key(account_id: str, key_id: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    secret = "".join(secrets.choice(alphabet) for _ in range(40))
    return f"sk-ah_{account_id}_{key_id}_{secret}"
