"""Contract-conformant usage stream entries (docs/redis-keys.md) for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis

from gateway.keys import shard_of, usage_stream

NOV_1_2026_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
DAY_MS = 86_400_000


def make_entry(i: int = 0, **overrides: Any) -> dict[str, str]:
    """Entry number i: deterministic values; overrides replace fields (None removes one)."""
    start = NOV_1_2026_MS + (i % 28) * DAY_MS + i
    entry: dict[str, Any] = {
        "rid": f"req_{i:010d}",
        "acct": f"acct{i % 5}",
        "key": f"k{i % 3}",
        "plan": "pro",
        "model": ("gpt-4o-mini", "gpt-4o", "o3-mini")[i % 3],
        "upstream": "openai",
        "period": "2026-11",
        "ts_start_ms": start,
        "ts_end_ms": start + 250,
        "status": 200,
        "outcome": "ok",
        "calls": 1,
        "overage": 0,
        "pt": 100 + i % 7,
        "ct": 20 + i % 11,
        "cached": i % 2,
        "reasoning": 0,
        "cost_nanos": 1_000_000 + 17 * (i % 13),
        "latency_ms": 200,
    }
    entry.update(overrides)
    return {k: str(v) for k, v in entry.items() if v is not None}


def write_entries(client: redis.Redis, entries: Iterable[Mapping[str, str]], shards: int = 16) -> list[str]:
    """XADD each entry to its account's shard stream `{s:NN}:usage`; returns the entry ids."""
    with client.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.xadd(usage_stream(shard_of(entry["acct"], shards)), dict(entry))
        return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


def totals(entries: Iterable[Mapping[str, str]]) -> dict[tuple[str, str], dict[str, int]]:
    """Expected (acct, model) -> calls, pt, ct, cost_nanos of unique request ids."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    seen: set[str] = set()
    for e in entries:
        if e["rid"] in seen:
            continue
        seen.add(e["rid"])
        t = out.setdefault((e["acct"], e["model"]), {"calls": 0, "pt": 0, "ct": 0, "cost_nanos": 0})
        for f in t:
            t[f] += int(e[f])
    return out
