"""Stripe through the `stripe` package: a customer per account, payment methods attached by id, an off-session
PaymentIntent per invoice attempt with the attempt's idempotency key, refunds.

Settings are read once (`StripeSettings.from_env`): `STRIPE_SECRET_KEY`, and `AIHUB_STRIPE_API_BASE` to point
the client at another server (localstripe in the tests). `AIHUB_STRIPE_AUTOMATIC_PAYMENT_METHODS=1` lets Stripe
offer the wallets it has enabled (automatic payment methods, redirects off: the charge is off-session); the
default, `payment_method_types=["card"]`, is what localstripe supports. The client is per provider instance
(`stripe.StripeClient`), not the package's global `stripe.api_key`, so two configurations can coexist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe

from billing.errors import InvalidInput
from billing.payments.provider import (
    ChargeResult,
    ChargeState,
    MethodDetails,
    PaymentDeclined,
    ProviderUnavailable,
    RefundResult,
)
from gateway.errors import ConfigError
from gateway.settings import environment

DEFAULT_API_BASE = "https://api.stripe.com"


@dataclass(frozen=True)
class StripeSettings:
    secret_key: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    automatic_payment_methods: bool = False
    max_network_retries: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StripeSettings:
        env = environment(environ)
        key = env.get("STRIPE_SECRET_KEY") or ""
        if not key:
            raise ConfigError("STRIPE_SECRET_KEY is not set (a Stripe secret key, sk_test_... or sk_live_...)")
        base = (env.get("AIHUB_STRIPE_API_BASE") or DEFAULT_API_BASE).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"AIHUB_STRIPE_API_BASE={base[:100]!r} must be an http(s) URL")
        automatic = (env.get("AIHUB_STRIPE_AUTOMATIC_PAYMENT_METHODS") or "0").lower() in ("1", "true", "yes", "on")
        return cls(secret_key=key, api_base=base, automatic_payment_methods=automatic)


def _short(text: str | None, limit: int = 500) -> str | None:
    return None if text is None else text[:limit]


def _pi_state(status: str) -> ChargeState:
    if status == "succeeded":
        return "succeeded"
    if status in ("processing", "requires_capture"):
        return "processing"
    if status in ("requires_action", "requires_confirmation"):
        return "requires_action"
    return "failed"            # requires_payment_method (declined), canceled


class StripeProvider:
    name = "stripe"

    def __init__(self, settings: StripeSettings) -> None:
        self.settings = settings
        self.client = stripe.StripeClient(settings.secret_key, base_addresses={"api": settings.api_base},
                                          max_network_retries=settings.max_network_retries)

    # -- customers and payment methods -------------------------------------------------------------------------
    def create_customer(self, account: Mapping[str, Any]) -> str:
        params: dict[str, Any] = {"name": str(account.get("name") or account["id"]),
                                  "metadata": {"account": str(account["id"])}}
        if account.get("billing_email"):
            params["email"] = str(account["billing_email"])
        try:
            customer = self.client.v1.customers.create(
                params, options={"idempotency_key": f"customer-{account['id']}"})  # type: ignore[arg-type]
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.AuthenticationError,
                stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe could not create the customer: {_short(exc.user_message, 200)}") \
                from None
        return str(customer.id)

    def attach_payment_method(self, customer: str, payment_method: str) -> MethodDetails:
        try:
            method = self.client.v1.payment_methods.attach(payment_method, {"customer": customer})
        except stripe.CardError as exc:
            code = exc.code or "card_declined"
            raise PaymentDeclined(f"The payment method was declined ({code}).", code=code) from None
        except stripe.InvalidRequestError as exc:
            raise InvalidInput(f"Stripe refused the payment method: {_short(exc.user_message, 200)}",
                               code="bad_payment_method") from None
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.AuthenticationError,
                stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe could not attach the payment method: "
                                      f"{_short(exc.user_message, 200)}") from None
        card = getattr(method, "card", None)
        brand = getattr(card, "brand", None) if card is not None else None
        last4 = getattr(card, "last4", None) if card is not None else None
        return MethodDetails(str(method.id), None if brand is None else str(brand),
                             None if last4 is None else str(last4))

    def find_attempt(self, customer: str, idempotency_key: str) -> ChargeResult | None:
        """What Stripe holds for one of our attempts (its PaymentIntent carries the key in `metadata.attempt`);
        None when Stripe never received it. ProviderUnavailable when Stripe cannot be asked."""
        states: dict[str, ChargeState] = {"succeeded": "succeeded", "processing": "processing",
                                          "requires_action": "requires_action", "requires_confirmation": "processing",
                                          "requires_payment_method": "failed", "canceled": "failed"}
        try:
            try:
                intents = self.client.v1.payment_intents.list({"customer": customer, "limit": 100})
            except stripe.InvalidRequestError:        # a server without the customer filter (localstripe)
                intents = self.client.v1.payment_intents.list({"limit": 100})
            for intent in intents.auto_paging_iter():
                metadata: Any = getattr(intent, "metadata", None)
                attempt = metadata.to_dict().get("attempt") if metadata is not None else None
                if intent.customer != customer or attempt != idempotency_key:
                    continue       # localstripe ignores list filters: checked here
                error = getattr(intent, "last_payment_error", None)
                code = getattr(error, "decline_code", None) or getattr(error, "code", None) if error else None
                return ChargeResult(states.get(str(intent.status), "processing"), str(intent.id),
                                    None if code is None else str(code),
                                    None if error is None else getattr(error, "message", None))
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.AuthenticationError,
                stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe could not be asked about an attempt: "
                                      f"{_short(exc.user_message, 200)}") from None
        return None

    # -- charges -------------------------------------------------------------------------------------------------
    def charge(self, invoice: Mapping[str, Any], customer: str, payment_method: str,
               idempotency_key: str) -> ChargeResult:
        params: dict[str, Any] = {
            "amount": int(invoice["total_minor"]), "currency": str(invoice["currency"]).lower(),
            "customer": customer, "payment_method": payment_method, "confirm": True, "off_session": True,
            "metadata": {"invoice": str(invoice["number"]), "account": str(invoice["account"]),
                         "attempt": idempotency_key},     # webhooks find the attempt even before its id is recorded
        }
        if self.settings.automatic_payment_methods:
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        else:
            params["payment_method_types"] = ["card"]
        try:
            intent = self.client.v1.payment_intents.create(
                params, options={"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        except stripe.CardError as exc:
            error = exc.error
            intent_obj = getattr(error, "payment_intent", None) if error is not None else None
            intent_id = getattr(intent_obj, "id", None) if intent_obj is not None else None
            decline = getattr(error, "decline_code", None) if error is not None else None
            failure = str(decline or exc.code or "card_declined")
            # Off-session, a card that needs 3-D Secure is refused with authentication_required: the customer
            # has to come back on-session; the attempt is not a plain decline.
            state: ChargeState = "requires_action" if exc.code == "authentication_required" else "failed"
            return ChargeResult(state, None if intent_id is None else str(intent_id), failure,
                                _short(exc.user_message or str(exc)))
        except (stripe.InvalidRequestError, stripe.AuthenticationError, stripe.PermissionError,
                stripe.RateLimitError) as exc:
            # Refused before any money moved (bad request, bad key, rate limited): a failed attempt.
            return ChargeResult("failed", None, str(exc.code or type(exc).__name__),
                                _short(exc.user_message or str(exc)))
        except (stripe.APIConnectionError, stripe.APIError, stripe.IdempotencyError) as exc:
            raise ProviderUnavailable(f"Stripe did not answer the charge ({type(exc).__name__}); its outcome is "
                                      "unknown until Stripe is asked again.") from None
        state = _pi_state(str(intent.status))
        code: str | None = None
        message: str | None = None
        if state == "failed":
            last = getattr(intent, "last_payment_error", None)
            code = str(getattr(last, "decline_code", None) or getattr(last, "code", None) or intent.status)
            message = _short(getattr(last, "message", None))
        elif state == "requires_action":
            code = "authentication_required"
            message = "The customer must authenticate this payment."
        return ChargeResult(state, str(intent.id), code, message)

    # -- refunds -------------------------------------------------------------------------------------------------
    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        try:
            refund = self.client.v1.refunds.create(
                {"payment_intent": provider_payment_id, "amount": amount_minor},
                options={"idempotency_key": idempotency_key})
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            return RefundResult("failed", None, _short(exc.user_message or str(exc)))
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.IdempotencyError,
                stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe did not answer the refund ({type(exc).__name__}).") from None
        status = str(refund.status)
        if status == "succeeded":
            return RefundResult("succeeded", str(refund.id))
        if status in ("failed", "canceled"):
            return RefundResult("failed", str(refund.id), _short(getattr(refund, "failure_reason", None)))
        return RefundResult("pending", str(refund.id))
