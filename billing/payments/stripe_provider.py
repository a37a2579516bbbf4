"""Stripe through the `stripe` package: a customer per account, payment methods attached by id, an off-session
PaymentIntent per invoice attempt with the attempt's idempotency key, refunds.

A card that needs authentication (3-D Secure) cannot be charged off-session: Stripe answers with a CardError
`authentication_required` (the PaymentIntent is left `requires_payment_method`; localstripe leaves it
`requires_action`). Either way the attempt is `requires_action` with the PaymentIntent's `client_secret` (Stripe.js
`confirmCardPayment(client_secret)` finishes it on-session) and `next_action.redirect_to_url.url` when Stripe gives
one. `cancel` makes such an intent impossible to complete before a new attempt starts; `find_attempt` and
`find_refund` tell what Stripe holds for an attempt or a refund whose answer was lost (refunds carry our key in
`metadata.refund`).

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


def _pi_state(status: str, error_code: str | None = None) -> ChargeState:
    if status == "succeeded":
        return "succeeded"
    if status in ("processing", "requires_capture"):
        return "processing"
    if status in ("requires_action", "requires_confirmation"):
        return "requires_action"
    if status == "requires_payment_method" and error_code == "authentication_required":
        return "requires_action"     # off-session 3-D Secure: the customer can still confirm it on-session
    return "failed"            # requires_payment_method (declined), canceled


def _redirect_url(intent: Any) -> str | None:
    """next_action.redirect_to_url.url of a PaymentIntent (a Stripe-hosted authentication page), if any."""
    action = getattr(intent, "next_action", None) if intent is not None else None
    redirect = getattr(action, "redirect_to_url", None) if action is not None else None
    url = getattr(redirect, "url", None) if redirect is not None else None
    return str(url) if url else None


def _field(obj: Any, name: str) -> Any:
    """A field of a StripeObject or of a plain dict (the error's payment_intent is either)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def intent_result(intent: Any) -> ChargeResult:
    """A PaymentIntent as Stripe holds it, as our attempt's result."""
    error = getattr(intent, "last_payment_error", None)
    code = (getattr(error, "decline_code", None) or getattr(error, "code", None)) if error else None
    state = _pi_state(str(intent.status), getattr(error, "code", None) if error else None)
    message = None if error is None else _short(getattr(error, "message", None))
    if state == "requires_action":
        return ChargeResult(state, str(intent.id), "authentication_required",
                            message or "The customer must authenticate this payment.",
                            client_secret=getattr(intent, "client_secret", None), action_url=_redirect_url(intent))
    if state == "failed" and code is None:
        code = str(intent.status)
    return ChargeResult(state, str(intent.id), None if code is None else str(code),
                        message if state == "failed" else None)


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

    def create_setup_intent(self, customer: str) -> tuple[str, str]:
        """A SetupIntent that saves a payment method of the customer for off-session charges: (its id, its
        client_secret, for Stripe.js to collect the card in the browser; the card never reaches us). The
        resulting `pm_...` is then attached with `attach_payment_method`."""
        params: dict[str, Any] = {"customer": customer, "usage": "off_session"}
        if self.settings.automatic_payment_methods:
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        else:
            params["payment_method_types"] = ["card"]
        try:
            intent = self.client.v1.setup_intents.create(params)  # type: ignore[arg-type]
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            raise InvalidInput(f"Stripe refused the setup: {_short(exc.user_message, 200)}",
                               code="setup_refused") from None
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.AuthenticationError,
                stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe could not start the setup: {_short(exc.user_message, 200)}") \
                from None
        return str(intent.id), str(intent.client_secret)

    def find_attempt(self, customer: str, idempotency_key: str,
                     provider_payment_id: str | None = None) -> ChargeResult | None:
        """What Stripe holds for one of our attempts: the PaymentIntent `provider_payment_id` when we have it, else
        the one carrying the key in `metadata.attempt`; None when Stripe never received it. ProviderUnavailable
        when Stripe cannot be asked."""
        try:
            if provider_payment_id:
                try:
                    return intent_result(self.client.v1.payment_intents.retrieve(provider_payment_id))
                except stripe.InvalidRequestError:
                    return None                       # no such PaymentIntent
            try:
                intents = self.client.v1.payment_intents.list({"customer": customer, "limit": 100})
            except stripe.InvalidRequestError:        # a server without the customer filter (localstripe)
                intents = self.client.v1.payment_intents.list({"limit": 100})
            for intent in intents.auto_paging_iter():
                metadata: Any = getattr(intent, "metadata", None)
                attempt = metadata.to_dict().get("attempt") if metadata is not None else None
                if intent.customer != customer or attempt != idempotency_key:
                    continue       # localstripe ignores list filters: checked here
                if str(intent.status) == "requires_confirmation":
                    return ChargeResult("processing", str(intent.id))   # created, not confirmed yet
                return intent_result(intent)
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
            intent_obj = _field(error, "payment_intent") if error is not None else None
            intent_id = _field(intent_obj, "id")
            decline = _field(error, "decline_code") if error is not None else None
            failure = str(decline or exc.code or "card_declined")
            # Off-session, a card that needs 3-D Secure is refused with authentication_required: the customer
            # has to come back on-session (the intent's client secret); the attempt is not a plain decline.
            if exc.code == "authentication_required":
                return ChargeResult("requires_action", None if intent_id is None else str(intent_id),
                                    "authentication_required", _short(exc.user_message or str(exc)),
                                    client_secret=_field(intent_obj, "client_secret"),
                                    action_url=_redirect_url(intent_obj))
            return ChargeResult("failed", None if intent_id is None else str(intent_id), failure,
                                _short(exc.user_message or str(exc)))
        except (stripe.InvalidRequestError, stripe.AuthenticationError, stripe.PermissionError,
                stripe.RateLimitError) as exc:
            # Refused before any money moved (bad request, bad key, rate limited): a failed attempt.
            return ChargeResult("failed", None, str(exc.code or type(exc).__name__),
                                _short(exc.user_message or str(exc)))
        except (stripe.APIConnectionError, stripe.APIError, stripe.IdempotencyError) as exc:
            raise ProviderUnavailable(f"Stripe did not answer the charge ({type(exc).__name__}); its outcome is "
                                      "unknown until Stripe is asked again.") from None
        return intent_result(intent)

    def cancel(self, provider_payment_id: str) -> ChargeResult:
        """Cancels a PaymentIntent awaiting the customer, so it can no longer be paid; the intent's final state
        (`failed` once cancelled; `succeeded` or `processing` when the customer completed it first)."""
        try:
            try:
                intent = self.client.v1.payment_intents.cancel(provider_payment_id)
            except stripe.InvalidRequestError:        # not cancellable (any more): what is it now?
                intent = self.client.v1.payment_intents.retrieve(provider_payment_id)
        except stripe.InvalidRequestError:
            return ChargeResult("failed", provider_payment_id, "canceled", "Stripe has no such PaymentIntent.")
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.AuthenticationError,
                stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe did not answer the cancellation ({type(exc).__name__}).") from None
        if str(intent.status) == "canceled":
            return ChargeResult("failed", str(intent.id), "canceled",
                                "Not authenticated by the customer; cancelled for a new attempt.")
        return intent_result(intent)

    # -- refunds -------------------------------------------------------------------------------------------------
    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        try:
            refund = self.client.v1.refunds.create(
                {"payment_intent": provider_payment_id, "amount": amount_minor,
                 "metadata": {"refund": idempotency_key}},     # found again by find_refund if the answer is lost
                options={"idempotency_key": idempotency_key})
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            return RefundResult("failed", None, _short(exc.user_message or str(exc)))
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.IdempotencyError,
                stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe did not answer the refund ({type(exc).__name__}).") from None
        return _refund_result(refund)

    def find_refund(self, provider_payment_id: str, idempotency_key: str) -> RefundResult | None:
        """The refund of `provider_payment_id` made with our key (`metadata.refund`); None when Stripe never
        received it. ProviderUnavailable when Stripe cannot be asked."""
        try:
            refunds = self.client.v1.refunds.list({"payment_intent": provider_payment_id, "limit": 100})
            for refund in refunds.auto_paging_iter():
                metadata: Any = getattr(refund, "metadata", None)
                if metadata is not None and metadata.to_dict().get("refund") == idempotency_key:
                    return _refund_result(refund)
        except stripe.InvalidRequestError:
            return None
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, stripe.AuthenticationError,
                stripe.PermissionError) as exc:
            raise ProviderUnavailable(f"Stripe could not be asked about a refund ({type(exc).__name__}).") from None
        return None


def _refund_result(refund: Any) -> RefundResult:
    status = str(refund.status)
    if status == "succeeded":
        return RefundResult("succeeded", str(refund.id))
    if status in ("failed", "canceled"):
        return RefundResult("failed", str(refund.id), _short(getattr(refund, "failure_reason", None)))
    return RefundResult("pending", str(refund.id))
