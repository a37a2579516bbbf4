"""Prometheus metrics of the gateway (served at /metrics).

Labelled metrics on the request path go through LabelCache: `labels(...)` takes a lock and builds a key on every
call; the cache hands back the child for label values seen before (their number is bounded by the catalog's
routes, statuses, models and upstreams).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("aihub_requests_total", "Requests by route, status and model",
                   ["route", "status", "model"], registry=REGISTRY)
UPSTREAM_LATENCY = Histogram("aihub_upstream_latency_seconds", "Time to upstream response headers",
                             ["upstream"], registry=REGISTRY,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
DECISIONS = Counter("aihub_quota_decisions_total", "Quota decisions by outcome", ["outcome"],
                    registry=REGISTRY)
ADMIT_LATENCY = Histogram("aihub_admit_latency_seconds", "Latency of the admit script round trip",
                          registry=REGISTRY,
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1))
REDIS_ERRORS = Counter("aihub_redis_errors_total", "Redis errors by kind", ["kind"], registry=REGISTRY)
SETTLE_ERRORS = Counter("aihub_settle_rejected_total", "Settles the script refused (kept in the spool's rejects)",
                        registry=REGISTRY)
USAGE_INVALID = Counter("aihub_usage_invalid_total", "Upstream usage objects rejected as malformed",
                        registry=REGISTRY)


class LabelCache:
    """`cache.get(*labels)`: the metric's child for these label values, looked up once."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric: Counter | Histogram = metric
        self.children: dict[Hashable, Any] = {}

    def get(self, *labels: str | int) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*map(str, labels))
        return child


def render() -> bytes:
    return generate_latest(REGISTRY)
