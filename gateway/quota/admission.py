"""What admit decided for one request, and what settle is told about it afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.keys import AccountKeys, ParsedKey
from gateway.quota.periods import Period


@dataclass
class Admission:
    rid: str
    key: ParsedKey
    keys: AccountKeys
    period: Period
    ts_start_ms: int
    billable: bool
    model: str = ""
    upstream: str = ""
    plan: str = ""
    calls: int = 1               # calls reserved (n x prompts); 0 when not billable
    limit: int = -1              # monthly calls, -1 = unlimited (or unknown when degraded)
    remaining: int = -1
    rpm: int = 0                 # token bucket: refilled at rpm per minute up to burst requests
    burst: int = 0
    rate_remaining: int = 0
    rate_reset_ms: int = 0
    degraded: bool = False       # admitted while Redis was unreachable (fail-open policy)
    settled: bool = field(default=False, repr=False)

    def headers(self) -> dict[str, str]:
        """Rate and quota headers (README "Rate and quota headers"): the rate limit is a token bucket, so
        `limit` is its capacity (burst), `remaining` what may be sent now, `reset` the time until it is full."""
        if self.degraded:
            return {}
        headers = {
            "x-ratelimit-limit-requests": str(self.burst),
            "x-ratelimit-remaining-requests": str(self.rate_remaining),
            "x-ratelimit-reset-requests": f"{self.rate_reset_ms / 1000:.3f}s",
        }
        if self.billable:
            headers["x-quota-limit"] = "unlimited" if self.limit < 0 else str(self.limit)
            headers["x-quota-remaining"] = "unlimited" if self.limit < 0 else str(self.remaining)
            headers["x-quota-reset"] = self.period.reset_iso
        return headers


@dataclass
class Usage:
    """What happened upstream; validated token counts (see gateway.usage)."""

    billable: bool
    outcome: str            # ok, upstream_error, client_cancel, abandoned
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nanos: int = 0
    latency_ms: int = 0
