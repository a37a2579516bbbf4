"""The rate and quota headers of an admission: the bytes pairs the proxy sends equal the documented dict."""

from __future__ import annotations

import pytest

from gateway.headers import raw
from gateway.keys import AccountKeys, ParsedKey
from gateway.quota.admission import Admission
from gateway.quota.periods import period_of

NOV_30 = 1_796_040_000.0   # 2026-11-30T12:00:00Z


def _admission(**fields: object) -> Admission:
    admission = Admission(rid="req_1", key=ParsedKey("acct_1", "key_1", "0" * 64), keys=AccountKeys("acct_1", 4),
                          period=period_of(NOV_30), ts_start_ms=int(NOV_30 * 1000), billable=True,
                          burst=500, rate_remaining=498, rate_reset_ms=25, rpm=6000)
    for name, value in fields.items():
        setattr(admission, name, value)
    return admission


@pytest.mark.parametrize("fields", [
    {"limit": 5000, "remaining": 4321},
    {"limit": -1, "remaining": -1},
    {"billable": False, "calls": 0},
    {"degraded": True},
    {"limit": 0, "remaining": 0, "rate_reset_ms": 12_345},
])
def test_header_pairs_are_the_documented_headers(fields: dict[str, object]) -> None:
    admission = _admission(**fields)
    assert admission.header_pairs() == raw(admission.headers())


def test_quota_headers_of_a_limited_plan() -> None:
    pairs = dict(_admission(limit=5000, remaining=4321, rate_reset_ms=1500).header_pairs())
    assert pairs == {b"x-ratelimit-limit-requests": b"500", b"x-ratelimit-remaining-requests": b"498",
                     b"x-ratelimit-reset-requests": b"1.500s", b"x-quota-limit": b"5000",
                     b"x-quota-remaining": b"4321", b"x-quota-reset": b"2026-12-01T00:00:00Z"}


@pytest.mark.parametrize(("used", "calls", "remaining", "released"), [
    (100, 1, 4899, 4900),      # an upstream error: the call is given back
    (4999, 3, 0, 1),           # pay-as-you-go past the limit: 0 left counted, 1 left released
    (5200, 1, 0, 0),           # already past the limit
])
def test_an_upstream_error_shows_the_quota_as_before_the_request(used: int, calls: int, remaining: int,
                                                                 released: int) -> None:
    admission = _admission(limit=5000, used=used, calls=calls, remaining=remaining)
    assert dict(admission.header_pairs())[b"x-quota-remaining"] == str(remaining).encode()
    assert dict(admission.header_pairs(released=True))[b"x-quota-remaining"] == str(released).encode()
    assert admission.header_pairs(released=True) == raw(admission.headers(released=True))
