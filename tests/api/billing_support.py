"""Seeding billing data for the management API's tests: invoices issued by the real Invoicer, Stripe on a real
localstripe (the session fixtures of tests/billing/conftest.py), notifications recorded by billing.notifications.

Tenants are made on the pinned clock's day (the 25th of November); `close_november` then moves the clock to
December 2nd and closes November, so every tenant made before gets its invoice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.context import ApiContext
from billing.payments.stripe_provider import StripeProvider, StripeSettings
from tests.quota.conftest import YEAR, PinnedClock

NOVEMBER = f"{YEAR}-11"
DECEMBER = f"{YEAR}-12"


def close_november(ctx: ApiContext, clock: PinnedClock) -> None:
    clock.set(f"{YEAR}-12-02T09:00:00")
    ctx.invoicer.close_period(NOVEMBER, {})


def close_december(ctx: ApiContext, clock: PinnedClock) -> None:
    clock.set(f"{YEAR + 1}-01-02T09:00:00")
    ctx.invoicer.close_period(DECEMBER, {})


def invoice_number(ctx: ApiContext, account_id: str, period: str = NOVEMBER) -> str:
    [invoice] = [i for i in ctx.invoicer.history(account_id) if i["period"] == period]
    return str(invoice["number"])


def use_stripe(ctx: ApiContext, settings: StripeSettings) -> None:
    """The API's payment service charges cards through localstripe."""
    ctx.payments.providers = {**ctx.payments.providers, "stripe": StripeProvider(settings)}


def record_notification(ctx: ApiContext, account_id: str, kind: str, dedup_key: str,
                        payload: Mapping[str, Any]) -> int:
    from billing.notifications import record
    with ctx.sessions.begin() as session:
        made = record(session, account_id, kind, dedup_key, payload, ctx.now())
    assert made is not None
    return made


class FailingPoster:
    """An HttpPoster whose receiver always answers 500 (what it was sent is kept)."""

    def __init__(self, status: int = 500) -> None:
        self.status = status
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        self.sent.append((url, body, dict(headers)))
        return self.status
