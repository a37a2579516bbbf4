"""The payment-provider interface. A provider moves money; billing.payments.service decides when, and records
every attempt in the database before and after the call.

A provider never sees or returns a card number: payment methods are the provider's ids (`pm_...`), described by
brand and last 4 digits at most (billing.payments.methods refuses anything that looks like a card number before a
provider is called). Amounts are integer minor units with a currency.

Besides the `PaymentProvider` protocol, a provider may offer (the service looks them up with `getattr`):

- `find_attempt(customer, idempotency_key, provider_payment_id=None) -> ChargeResult | None`: what the provider
  holds for one of our attempts (by its id when we have it, else by our key); None when it never received it.
  The payments round uses it to settle attempts left `processing` or `requires_action`.
- `cancel(provider_payment_id) -> ChargeResult`: makes an attempt awaiting the customer (`requires_action`)
  impossible to complete, so that a new attempt may start; the result is the attempt's final state (`failed`
  when it was cancelled, `succeeded` when the customer completed it first).
- `find_refund(provider_payment_id, idempotency_key) -> RefundResult | None`: a refund we asked for (its key);
  None when the provider never received it.
- `replays_charges = True`: sending a charge again with the same idempotency key is answered with the first
  outcome (PayPal-Request-Id), so an attempt whose answer was lost is settled by sending it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from billing.errors import BillingError

ChargeState = Literal["succeeded", "processing", "requires_action", "failed", "pending"]


@dataclass(frozen=True)
class ChargeResult:
    state: ChargeState
    provider_id: str | None = None          # e.g. the PaymentIntent id
    failure_code: str | None = None         # e.g. card_declined, insufficient_funds, authentication_required
    failure_message: str | None = None
    # requires_action only: what the customer needs to finish the payment on-session. `client_secret` is the
    # PaymentIntent's (Stripe.js confirms the payment with it; stored encrypted, never shown in views or logs);
    # `action_url` a page of the provider's where the customer approves it (PayPal's payer-action link, Stripe's
    # next_action.redirect_to_url), when the provider gives one.
    client_secret: str | None = field(default=None, repr=False)
    action_url: str | None = None


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
        """Charges the invoice's total off-session. A decline is a `failed` result; a payment the customer must
        authenticate is `requires_action` (with its client secret or action link); ProviderUnavailable when the
        outcome is unknown (the caller keeps the attempt open and must not start another)."""
        ...

    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        """Refunds `amount_minor` of the payment; a refusal is a `failed` result; ProviderUnavailable when the
        outcome is unknown (the refund stays pending until the payments round asks again)."""
        ...
