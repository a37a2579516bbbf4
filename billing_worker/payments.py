"""Payments in the worker role: apply provider webhook events, settle what the providers left unanswered, charge
newly issued invoices, run dunning.

`services(store)` builds the PaymentService and the Dunner; the providers are configured by the environment:
Stripe with STRIPE_SECRET_KEY, PayPal with PAYPAL_CLIENT_ID / PAYPAL_CLIENT_SECRET, bank transfer always
(billing.payments.settings: AIHUB_PAYMENT_ACTION_URL). `PaymentsScheduler` runs a round every minute;
`process_provider_event` (actors) applies one event as soon as the webhook endpoint recorded it.

A round (`payments_round`): the recorded events the actor missed; attempts left processing or requires_action
and refunds left pending for 10 minutes, settled by asking the provider (billing.payments.reconcile: Stripe by
id or metadata, PayPal by polling the capture or order); collection; the dunning schedule. Returns the counts of
each step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from billing.dunning import Dunner
from billing.payments.bank_transfer import BankTransferProvider
from billing.payments.provider import PaymentProvider
from billing.payments.service import PaymentService
from billing.payments.settings import PaymentSettings
from billing.provider_events import apply, pending
from billing.settings import Settings as BillingSettings
from billing.store import Store
from billing_worker.close import invoicer_for
from billing_worker.store_thread import StoreThread
from gateway.errors import ConfigError


def providers(environ: Mapping[str, str] | None = None) -> dict[str, PaymentProvider]:
    found: dict[str, PaymentProvider] = {"bank_transfer": BankTransferProvider()}
    try:
        from billing.payments.stripe_provider import StripeProvider, StripeSettings
        found["stripe"] = StripeProvider(StripeSettings.from_env(environ))
    except ConfigError:
        pass                       # Stripe not configured: card payments wait
    try:
        from billing.payments.paypal_provider import PayPalProvider, PayPalSettings
        found["paypal"] = PayPalProvider(PayPalSettings.from_env(environ))
    except ConfigError:
        pass                       # PayPal not configured
    return found


def services(store: Store, environ: Mapping[str, str] | None = None,
             provider_map: Mapping[str, PaymentProvider] | None = None) -> tuple[PaymentService, Dunner]:
    invoicer = invoicer_for(store, environ)
    payments = PaymentService(store.accounts.sessions, invoicer,
                              provider_map if provider_map is not None else providers(environ),
                              clock=store.accounts.clock, action_url=PaymentSettings.from_env(environ).action_url)
    dunner = Dunner(store.accounts.sessions, payments, store.accounts, store.accounts.catalog,
                    BillingSettings.from_env(environ).dunning_retry_days, clock=store.accounts.clock)
    payments.on_paid.append(dunner.settled)          # a payment lifts a dunning restriction at once
    return payments, dunner


def payments_round(store: Store, payments: PaymentService, dunner: Dunner) -> dict[str, Any]:
    applied = [apply(store.accounts.sessions, event_id, payments) for event_id in pending(store.accounts.sessions)]
    return {"events": len(applied), "reconciled": payments.reconcile(), "refunds": payments.reconcile_refunds(),
            "collected": dunner.collect(), "dunning": dunner.run()}


class PaymentsScheduler(StoreThread):
    """Every `interval_s`: applies recorded provider events the actor missed, charges invoices issued since, and
    runs the dunning schedule."""

    purpose = "collecting payments"

    def __init__(self, interval_s: float = 60.0, opener: Callable[[], Any] | None = None) -> None:
        super().__init__("payments-scheduler", interval_s, opener)
        self.built: tuple[PaymentService, Dunner] | None = None

    def work(self, store: Any) -> dict[str, Any]:
        if self.built is None:
            self.built = services(store)
        return payments_round(store, *self.built)
