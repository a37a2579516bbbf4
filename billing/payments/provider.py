"""The payment-provider interface. A provider moves money; billing.payments.service decides when, and records
every attempt in the database before and after the call.

A provider never sees or returns a card number: payment methods are the provider's ids (`pm_...`), described by
brand and last 4 digits at most. Amounts are integer minor units with a currency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from billing.errors import BillingError

ChargeState = Literal["succeeded", "processing", "requires_action", "failed", "pending"]


@dataclass(frozen=True)
class ChargeResult:
    state: ChargeState
    provider_id: str | None = None          # e.g. the PaymentIntent id
    failure_code: str | None = None         # e.g. card_declined, insufficient_funds
    failure_message: str | None = None


@dataclass(frozen=True)
class RefundResult:
    state: Literal["succeeded", "pending", "failed"]
    provider_id: str | None = None
    failure_message: str | None = None


@dataclass(frozen=True)
class MethodDetails:
    """What the provider tells about an attached payment method (shown to the customer, never a number)."""

    provider_method_id: str
    brand: str | None = None
    last4: str | None = None


class PaymentDeclined(BillingError):
    """The provider refused a payment method (e.g. when attaching it)."""

    status = 402
    code = "card_declined"


class ProviderUnavailable(BillingError):
    """The provider could not be reached or answered with a server error: the outcome of the call is unknown."""

    status = 503
    code = "payment_provider_unavailable"


class PaymentProvider(Protocol):
    name: str

    def create_customer(self, account: Mapping[str, Any]) -> str:
        """Creates the account's customer at the provider; returns its id."""
        ...

    def attach_payment_method(self, customer: str, payment_method: str) -> MethodDetails:
        """Attaches a payment method (the provider's id) to the customer; PaymentDeclined when refused."""
        ...

    def charge(self, invoice: Mapping[str, Any], customer: str, payment_method: str,
               idempotency_key: str) -> ChargeResult:
        """Charges the invoice's total off-session. A decline is a `failed` result; ProviderUnavailable when the
        outcome is unknown (the caller keeps the attempt open and must not start another)."""
        ...

    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        ...
