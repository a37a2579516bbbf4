"""The gateway's Redis client: a single server or a Redis Cluster, from settings."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gateway.settings import Settings


def text(value: Any) -> str:
    """A Redis reply value as text (replies are bytes; clients with decode_responses give str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def async_client(settings: Settings) -> Any:
    options: dict[str, Any] = {"socket_timeout": settings.redis_timeout_s,
                               "socket_connect_timeout": settings.redis_timeout_s}
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return aioredis.Redis.from_url(settings.redis_url, max_connections=64,
                                   retry=Retry(ExponentialBackoff(cap=0.1), 1),
                                   health_check_interval=0, **options)
