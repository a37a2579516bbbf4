"""API keys' last-used time, recorded off the hot path.

admit.lua already writes `k:<kid>:ts` (ms since epoch) into the account's token-bucket hash
`{s:NN}:a:<acct>:tb` on every admitted request. The worker role scans those hashes every
`INTERVAL_S` (so at most once a minute per key) and moves `api_keys.last_used_at` forward through
`AccountService.record_last_used`; the gateway does nothing more per request.

What it can miss: a bucket hash expires when its tokens are full again plus a minute (admit.lua's
PEXPIRE), so a key used once and never again may vanish before a scan when the plan refills quickly;
the next use records it. Last-used times are a convenience, not billing data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any, Protocol

from gateway.redis_client import text

log = logging.getLogger(__name__)

INTERVAL_S = 60.0
BUCKETS_MATCH = "{s:*}:a:*:tb"
_BUCKETS_RE = re.compile(r"^\{s:\d+\}:a:([a-z0-9]{4,32}):tb$")
_FIELD_RE = re.compile(r"^k:([a-z0-9]{4,32}):ts$")


class LastUsedRecorder(Protocol):
    def record_last_used(self, used: dict[tuple[str, str], float]) -> int: ...


def _bucket_keys(client: Any) -> Iterator[Any]:
    """Every token-bucket hash; on a Redis Cluster, SCAN runs on every primary."""
    if hasattr(client, "get_primaries"):                 # redis.RedisCluster
        seen: set[str] = set()
        for node in client.get_primaries():
            for name in client.scan_iter(match=BUCKETS_MATCH, count=1000, _type="hash",
                                         target_nodes=node):
                if text(name) not in seen:
                    seen.add(text(name))
                    yield name
        return
    yield from client.scan_iter(match=BUCKETS_MATCH, count=1000, _type="hash")


def collect_last_used(client: Any) -> dict[tuple[str, str], float]:
    """{(account, key id): last admitted request, epoch seconds} from every `{s:NN}:a:<acct>:tb` hash."""
    out: dict[tuple[str, str], float] = {}
    for name in _bucket_keys(client):
        match = _BUCKETS_RE.match(text(name))
        if match is None:
            continue
        acct = match.group(1)
        for field, value in client.hgetall(name).items():
            key = _FIELD_RE.match(text(field))
            if key is None:
                continue
            try:
                seconds = int(text(value)) / 1000
            except ValueError:
                continue
            pair = (acct, key.group(1))
            out[pair] = max(seconds, out.get(pair, 0.0))
    return out


def sync_last_used(client: Any, service: LastUsedRecorder,
                   already: dict[tuple[str, str], float] | None = None) -> int:
    """Records the keys' last-used times in the database (only forward); returns the rows changed.

    `already`: what a previous sync of this process recorded; unchanged keys are skipped, and it is updated."""
    used = collect_last_used(client)
    if already is not None:
        used = {pair: seconds for pair, seconds in used.items() if already.get(pair) != seconds}
    if not used:
        return 0
    changed = service.record_last_used(used)
    if already is not None:
        already.update(used)
    return changed
