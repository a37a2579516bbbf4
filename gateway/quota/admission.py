"""What admit decided for one request, and what settle is told about it afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.keys import AccountKeys, ParsedKey
from gateway.quota.periods import Period


@dataclass(slots=True)
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
    remaining: int = -1          # calls left once this request's calls are counted
    used: int = 0                # calls used and reserved before this request (admit.lua's count)
    rpm: int = 0                 # token bucket: refilled at rpm per minute up to burst requests
    burst: int = 0
    rate_remaining: int = 0
    rate_reset_ms: int = 0
    degraded: bool = False       # admitted while Redis was unreachable (fail-open policy)
    settled: bool = field(default=False, repr=False)

    def remaining_after(self, released: bool) -> int:
        """For a limited plan (`limit` >= 0): calls left once this request is settled: `remaining` when its calls
        count, what was left when it was admitted when they are released (an upstream error: nothing billed). A
        snapshot, as `remaining` is: calls of other requests in flight then are counted as used."""
        return max(0, self.limit - self.used) if released else self.remaining

    def headers(self, released: bool = False) -> dict[str, str]:
        """Rate and quota headers (README "Rate and quota headers"): the rate limit is a token bucket, so
        `limit` is its capacity (burst), `remaining` what may be sent now, `reset` the time until it is full.
        `released`: the request's calls are released, not counted (see `remaining_after`)."""
        if self.degraded:
            return {}
        headers = {
            "x-ratelimit-limit-requests": str(self.burst),
            "x-ratelimit-remaining-requests": str(self.rate_remaining),
            "x-ratelimit-reset-requests": f"{self.rate_reset_ms / 1000:.3f}s",
        }
        if self.billable:
            headers["x-quota-limit"] = "unlimited" if self.limit < 0 else str(self.limit)
            headers["x-quota-remaining"] = "unlimited" if self.limit < 0 else str(self.remaining_after(released))
            headers["x-quota-reset"] = self.period.reset_iso
        return headers

    def header_pairs(self, released: bool = False) -> list[tuple[bytes, bytes]]:
        """`headers(released)` as ASGI header pairs (the proxy's answers), built without the dict."""
        if self.degraded:
            return []
        pairs = [(b"x-ratelimit-limit-requests", b"%d" % self.burst),
                 (b"x-ratelimit-remaining-requests", b"%d" % self.rate_remaining),
                 (b"x-ratelimit-reset-requests", b"%.3fs" % (self.rate_reset_ms / 1000))]
        if self.billable:
            if self.limit < 0:
                pairs += ((b"x-quota-limit", b"unlimited"), (b"x-quota-remaining", b"unlimited"))
            else:
                pairs += ((b"x-quota-limit", b"%d" % self.limit),
                          (b"x-quota-remaining", b"%d" % self.remaining_after(released)))
            pairs.append((b"x-quota-reset", self.period.reset_iso.encode()))
        return pairs


@dataclass(slots=True)
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
