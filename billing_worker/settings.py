"""Settings of the billing worker, read once from the environment into a typed, frozen dataclass.

A missing or malformed value fails at start-up with a `ConfigError` that names the variable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import redis

from billing_worker.errors import ConfigError
from gateway.settings import parse_bool, var_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLICKHOUSE_URL = f"chdb://{REPO_ROOT / '.var' / 'chdb'}"     # without AIHUB_VAR_DIR: default_clickhouse_url
FAULTS = ("", "kill-after-insert")

T = TypeVar("T")


def _read(env: Mapping[str, str], name: str, default: T, cast: Callable[[str], T], expected: str) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return cast(raw.strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {expected}, got {raw!r}") from None


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        value = int(raw, 10)
        if not low <= value <= high:
            raise ValueError(raw)
        return value
    return cast


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(raw)
    return value


def _clickhouse_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme == "chdb":
        if not (parsed.path or parsed.netloc):
            raise ValueError(raw)
        return raw
    if parsed.scheme in ("http", "https") and parsed.hostname:
        return raw
    raise ValueError(raw)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        if raw not in options:
            raise ValueError(raw)
        return raw
    return cast


def default_clickhouse_url(env: Mapping[str, str]) -> str:
    """CLICKHOUSE_URL's default: chDB in `<AIHUB_VAR_DIR>/chdb` (`<repo>/.var/chdb` without it). chDB allows one
    process per data directory, so each var dir (each `make up` or `make stack`) has its own."""
    return f"chdb://{var_dir(env) / 'chdb'}"          # var_dir is absolute


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    broker_url: str = ""          # Dramatiq's Redis; must be a single server (default: REDIS_URL)
    clickhouse_url: str = DEFAULT_CLICKHOUSE_URL
    clickhouse_cluster: str = ""
    schema_dir: Path = REPO_ROOT / "clickhouse"
    shards: int = 16
    drain_group: str = "drain"
    drain_consumer: str = ""
    drain_batch_size: int = 25_000
    drain_claim_idle_ms: int = 60_000
    drain_max_batches: int = 0
    drain_insert_attempts: int = 6
    drain_backoff_s: float = 0.5
    drain_backoff_max_s: float = 30.0
    drain_trim: bool = True
    drain_fault: str = ""
    drain_interval_s: float = 5.0
    anomaly_factor: float = 3.0
    anomaly_window_days: int = 7
    anomaly_min_calls: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            redis_url=_read(e, "REDIS_URL", d.redis_url, str, "a redis:// URL"),
            redis_cluster=_read(e, "REDIS_CLUSTER", d.redis_cluster, parse_bool, "true or false"),
            broker_url=_read(e, "AIHUB_BROKER_URL", "", str, "a redis:// URL of a single server"),
            clickhouse_url=_read(e, "CLICKHOUSE_URL", default_clickhouse_url(e), _clickhouse_url,
                                 "chdb:///<dir> or http(s)://user:pass@host:8123/db"),
            clickhouse_cluster=_read(e, "CLICKHOUSE_CLUSTER", "", str, "a cluster name"),
            schema_dir=_read(e, "CLICKHOUSE_SCHEMA_DIR", d.schema_dir, Path, "a directory"),
            shards=_read(e, "AIHUB_SHARDS", d.shards, _int_in(1, 100), "an integer in 1..100"),
            drain_group=_read(e, "AIHUB_DRAIN_GROUP", d.drain_group, str, "a consumer group name"),
            drain_consumer=_read(e, "AIHUB_DRAIN_CONSUMER", f"{socket.gethostname()}-{os.getpid()}", str,
                                 "a consumer name"),
            drain_batch_size=_read(e, "AIHUB_DRAIN_BATCH_SIZE", d.drain_batch_size, _int_in(1, 1_000_000),
                                   "an integer in 1..1000000"),
            drain_claim_idle_ms=_read(e, "AIHUB_DRAIN_CLAIM_IDLE_MS", d.drain_claim_idle_ms,
                                      _int_in(0, 7 * 86_400_000), "milliseconds (0..7 days)"),
            drain_max_batches=_read(e, "AIHUB_DRAIN_MAX_BATCHES", d.drain_max_batches, _int_in(0, 10**9),
                                    "an integer >= 0 (0 = until the streams are empty)"),
            drain_insert_attempts=_read(e, "AIHUB_DRAIN_INSERT_ATTEMPTS", d.drain_insert_attempts,
                                        _int_in(1, 100), "an integer in 1..100"),
            drain_backoff_s=_read(e, "AIHUB_DRAIN_BACKOFF_S", d.drain_backoff_s, _positive_float,
                                  "seconds > 0"),
            drain_backoff_max_s=_read(e, "AIHUB_DRAIN_BACKOFF_MAX_S", d.drain_backoff_max_s, _positive_float,
                                      "seconds > 0"),
            drain_trim=_read(e, "AIHUB_DRAIN_TRIM", d.drain_trim, parse_bool, "true or false"),
            drain_fault=_read(e, "AIHUB_DRAIN_FAULT", "", _choice(FAULTS), f"one of {FAULTS[1:]} (tests only)"),
            drain_interval_s=_read(e, "AIHUB_DRAIN_INTERVAL_S", d.drain_interval_s, _positive_float,
                                   "seconds > 0"),
            anomaly_factor=_read(e, "AIHUB_ANOMALY_FACTOR", d.anomaly_factor, _positive_float, "a number > 0"),
            anomaly_window_days=_read(e, "AIHUB_ANOMALY_WINDOW_DAYS", d.anomaly_window_days, _int_in(1, 365),
                                      "days in 1..365"),
            anomaly_min_calls=_read(e, "AIHUB_ANOMALY_MIN_CALLS", d.anomaly_min_calls, _int_in(0, 10**12),
                                    "an integer >= 0"),
        )

    def redis_client(self) -> redis.Redis | redis.RedisCluster:
        """A client of the usage streams' Redis: a `redis.RedisCluster` when `redis_cluster` is set."""
        if self.redis_cluster:
            return redis.RedisCluster.from_url(self.redis_url)
        return redis.Redis.from_url(self.redis_url)

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def consumer(self) -> str:
        return self.drain_consumer or f"{socket.gethostname()}-{os.getpid()}"
