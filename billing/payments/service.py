"""Collecting invoices: every attempt recorded before and after the provider is called.

`charge_invoice(number)` inserts the attempt as a `processing` payment and commits *before* calling the provider.
A partial unique index on payments (one payment per invoice in processing, requires_action, succeeded,
partially_refunded or refunded: `uq_payments_invoice_live`) makes a second, concurrent charge fail to insert; it
then returns the payment already under way instead of calling the provider. So an invoice is charged at most once
even when two workers run at once and even against a provider that ignores idempotency keys (localstripe). The
provider is also given the attempt's idempotency key, `invoice-<number>-attempt-<n>`, so a retried request of the
same attempt (network retry) is not a second charge at Stripe. A decline records the attempt `failed`, which frees
the invoice: the next charge is attempt n+1. When the provider cannot be reached the attempt stays `processing`
(its outcome is unknown) and no new attempt can start until it is resolved (webhooks, or the payments round
asking the provider: billing.payments.reconcile).

**Requires action.** A card that needs 3-D Secure (or a PayPal payer who must approve) leaves the attempt
`requires_action`, with what the customer needs to finish it: the PaymentIntent's client secret (encrypted at
rest; `pending_action()` returns it for the customer's own confirmation page) and a confirmation link
(`action_url`: the provider's page, else `AIHUB_PAYMENT_ACTION_URL` with the invoice number). The customer can
complete it (a `payment_intent.succeeded` webhook, or the payments round asking Stripe, pays the invoice). It
does not block the invoice: the next charge (a dunning retry, `aihub invoice pay`, a bank transfer marked paid)
first cancels it at the provider (`cancel`: a cancelled PaymentIntent can no longer be paid), records it
`failed`, and starts attempt n+1; if the customer completed it first, that payment is the invoice's and nothing
else is charged. At most one attempt is ever live, so at most one succeeds.

**Payment methods** are added by the provider's id only, checked locally first (billing.payments.methods: the
provider's id format; anything that looks like a card number is refused and never sent, stored or logged), then
checked against the database (a method on file for another account: Conflict payment_method_in_use) before any
provider call.

Refunds: billing.payments.refunds (reserved before the provider is called, credit note after). Money is integer
minor units throughout. Errors: billing.errors (InvalidInput 400, NotFound 404, Conflict 409) and the provider's
PaymentDeclined 402 / ProviderUnavailable 503.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from billing.db.models import (
    LIVE_PAYMENT_STATES,
    Account,
    AuditEntry,
    CreditNote,
    Invoice,
    Payment,
    PaymentCustomer,
    PaymentMethod,
    Refund,
)
from billing.errors import Conflict, NotFound
from billing.invoicing import Invoicer
from billing.payments import reconcile as reconciliation
from billing.payments import refunds as refund_book
from billing.payments.bank_transfer import check_reference
from billing.payments.bank_transfer import method_id as bank_method_id
from billing.payments.methods import check_method_id
from billing.payments.provider import ChargeResult, PaymentProvider
from billing.payments.views import credit_note_view, method_view, payment_view, refund_view

PAYABLE = ("open", "uncollectible")
REFUNDABLE = ("succeeded", "partially_refunded")
FAILED_STATES = ("failed", "requires_action")     # attempts that did not pay: dunning counts both as failures
RECONCILE_AFTER_S = 600.0

__all__ = ["FAILED_STATES", "PAYABLE", "REFUNDABLE", "PaymentService", "method_view", "payment_view"]


class PaymentService:
    def __init__(self, sessions: sessionmaker[Session], invoicer: Invoicer,
                 providers: Mapping[str, PaymentProvider], clock: Callable[[], float] = time.time,
                 action_url: str | None = None) -> None:
        """`action_url`: AIHUB_PAYMENT_ACTION_URL, the operator's page where a customer confirms a payment that
        needs authentication, with `{invoice}` for the invoice number (billing.payments.settings); used when the
        provider gives no page of its own."""
        self.sessions = sessions
        self.invoicer = invoicer
        self.providers = dict(providers)
        self.clock = clock
        self.action_url = action_url
        self.on_paid: list[Callable[[str], None]] = []     # called with the invoice number once it is paid

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def provider(self, name: str) -> PaymentProvider:
        provider = self.providers.get(name)
        if provider is None:
            raise Conflict(f"The payment provider {name!r} is not configured.", code="provider_not_configured")
        return provider

    # -- payment methods -----------------------------------------------------------------------------------------
    def _known_account(self, session: Session, account_id: str) -> Account:
        account = session.get(Account, account_id) if isinstance(account_id, str) and len(account_id) <= 32 \
            else None
        if account is None:
            raise NotFound(f"No account {str(account_id)[:40]!r}.", code="account_not_found")
        return account

    def customer(self, account_id: str, provider_name: str) -> str:
        """The account's customer at the provider, created on first use (one per account and provider)."""
        with self.sessions() as session:
            account = self._known_account(session, account_id)
            known = session.get(PaymentCustomer, (account_id, provider_name))
            if known is not None:
                return known.customer_id
            details = {"id": account.id, "name": account.name, "billing_email": account.billing_email}
        customer_id = self.provider(provider_name).create_customer(details)
        try:
            with self.sessions.begin() as session:
                session.add(PaymentCustomer(account_id=account_id, provider=provider_name, customer_id=customer_id,
                                            created_at=self.now()))
        except IntegrityError:
            with self.sessions() as session:
                known = session.get(PaymentCustomer, (account_id, provider_name))
                assert known is not None
                return known.customer_id      # a concurrent call created it first
        return customer_id

    _customer = customer        # the name other callers in this module use

    def add_payment_method(self, account_id: str, provider_method_id: str, *, provider: str = "stripe",
                           make_default: bool = True, actor: str = "admin") -> dict[str, Any]:
        """Attaches the provider's payment method (its id, e.g. `pm_...` from a SetupIntent) to the account's
        customer and records it; returns its view. Before any provider call: the id's format (InvalidInput
        bad_payment_method; card_number_refused for anything that looks like a card number), the account
        (NotFound account_not_found) and the database (Conflict payment_method_in_use: on file for another
        account). A method already on file for this account is made the default again without a provider call.
        PaymentDeclined (card_declined) when the provider refuses it."""
        if provider == "bank_transfer":
            return self.enable_bank_transfer(account_id, make_default=make_default, actor=actor)
        method_id = check_method_id(provider, provider_method_id)
        with self.sessions() as session:
            self._known_account(session, account_id)
            ids = {method_id, method_id.removeprefix("card:"), "card:" + method_id.removeprefix("card:")}
            on_file = session.scalars(select(PaymentMethod).where(PaymentMethod.provider == provider,
                                                                  PaymentMethod.provider_method_id.in_(ids))).first()
            if on_file is not None and on_file.account_id != account_id:
                raise Conflict("This payment method belongs to another account.", code="payment_method_in_use")
            known = None if on_file is None else (on_file.provider_customer_id, on_file.provider_method_id or "",
                                                  on_file.brand, on_file.last4)
        if known is not None:
            return self._record_method(account_id, provider, known[0], known[1], known[2], known[3], make_default,
                                       actor)
        self.provider(provider)           # Conflict provider_not_configured, before a customer is made
        customer = self.customer(account_id, provider)
        details = self.provider(provider).attach_payment_method(customer, method_id)
        return self._record_method(account_id, provider, customer, details.provider_method_id, details.brand,
                                   details.last4, make_default, actor)

    def enable_bank_transfer(self, account_id: str, *, make_default: bool = True,
                             actor: str = "admin") -> dict[str, Any]:
        """Lets the account pay by bank transfer (a method `bank:<account>`); its view. NotFound for an unknown
        account."""
        with self.sessions() as session:
            self._known_account(session, account_id)
        return self._record_method(account_id, "bank_transfer", None, bank_method_id(account_id), None, None,
                                   make_default, actor)

    def _record_method(self, account_id: str, provider: str, customer: str | None, method_id: str,
                       brand: str | None, last4: str | None, make_default: bool, actor: str) -> dict[str, Any]:
        with self.sessions.begin() as session:
            account = session.scalars(select(Account).where(Account.id == account_id).with_for_update()).one()
            method = session.scalars(select(PaymentMethod).where(PaymentMethod.provider == provider,
                                                                 PaymentMethod.provider_method_id == method_id)).first()
            if method is None:
                method = PaymentMethod(account_id=account.id, provider=provider, provider_customer_id=customer,
                                       provider_method_id=method_id, brand=brand, last4=last4, is_default=False,
                                       created_at=self.now())
                session.add(method)
            elif method.account_id != account_id:
                raise Conflict("This payment method belongs to another account.", code="payment_method_in_use")
            has_default = session.scalars(select(PaymentMethod.id).where(
                PaymentMethod.account_id == account_id, PaymentMethod.is_default.is_(True))).first() is not None
            if make_default or not has_default:
                session.execute(update(PaymentMethod).where(PaymentMethod.account_id == account_id)
                                .values(is_default=False))
                method.is_default = True
            session.flush()
            session.add(AuditEntry(at=self.now(), actor=actor, action="payment_method.add", account_id=account_id,
                                   details={"provider": provider, "method": method.id, "brand": brand,
                                            "last4": last4, "default": method.is_default}))
            return method_view(method)

    def payment_methods(self, account_id: str) -> list[dict[str, Any]]:
        """The account's payment methods, oldest first (NotFound for an unknown account)."""
        with self.sessions() as session:
            self._known_account(session, account_id)
            return [method_view(m) for m in session.scalars(
                select(PaymentMethod).where(PaymentMethod.account_id == account_id).order_by(PaymentMethod.id))]

    def remove_payment_method(self, account_id: str, method_id: int, *, actor: str = "admin") -> dict[str, Any]:
        """Removes a payment method from the account (the removed one is returned). When it was the default, the
        newest remaining one becomes the default. Payments made with it keep their history (without the link).
        NotFound (payment_method_not_found); Conflict (last_payment_method) for the last method of an account
        on a paid plan. The method stays attached to the customer at the provider; it is never charged again."""
        with self.sessions.begin() as session:
            account = session.scalars(select(Account).where(Account.id == account_id).with_for_update()).first()
            method = session.get(PaymentMethod, method_id)
            if account is None or method is None or method.account_id != account_id:
                raise NotFound(f"No payment method {method_id} on account {account_id!r}.",
                               code="payment_method_not_found")
            others = list(session.scalars(select(PaymentMethod).where(
                PaymentMethod.account_id == account_id, PaymentMethod.id != method_id)
                .order_by(PaymentMethod.created_at.desc(), PaymentMethod.id.desc())))
            plan = self.invoicer.catalog.plans.get(account.subscription.plan if account.subscription else "")
            if not others and plan is not None and (plan.prices_minor or {}).get(account.currency, 0) > 0:
                raise Conflict(f"This is the only payment method of an account on the paid {plan.display_name} "
                               "plan: add another one first (or move to a free plan).", code="last_payment_method")
            view = method_view(method)
            session.execute(update(Payment).where(Payment.payment_method_id == method_id)
                            .values(payment_method_id=None))
            session.delete(method)
            if method.is_default and others:
                others[0].is_default = True
            session.add(AuditEntry(at=self.now(), actor=actor, action="payment_method.remove", account_id=account_id,
                                   details={"provider": view["provider"], "method": method_id,
                                            "brand": view["brand"], "last4": view["last4"]}))
        return view

    def setup_intent(self, account_id: str, provider: str = "stripe") -> dict[str, Any]:
        """Starts adding a payment method in the customer's browser (Stripe: a SetupIntent of the account's
        customer; Stripe.js confirms it with `client_secret` and the resulting `pm_...` goes to
        add_payment_method). Conflict (provider_not_configured, setup_not_supported)."""
        create = getattr(self.provider(provider), "create_setup_intent", None)
        if create is None:
            raise Conflict(f"The {provider} provider has no client-side setup; add the method by its id.",
                           code="setup_not_supported")
        intent_id, client_secret = create(self._customer(account_id, provider))
        return {"provider": provider, "setup_intent": str(intent_id), "client_secret": str(client_secret)}

    # -- charges -------------------------------------------------------------------------------------------------
    def _live(self, session: Session, invoice_id: int) -> Payment | None:
        return session.scalars(select(Payment).where(Payment.invoice_id == invoice_id,
                                                     Payment.state.in_(LIVE_PAYMENT_STATES))).first()

    def _live_view(self, number: str) -> dict[str, Any] | None:
        with self.sessions() as session:
            invoice_id = session.scalars(select(Invoice.id).where(Invoice.number == number)).one()
            live = self._live(session, invoice_id)
            return None if live is None else payment_view(live, number)

    def charge_invoice(self, number: str) -> dict[str, Any]:
        """Charges an open invoice with the account's default payment method; returns the payment. When a
        payment of the invoice is under way or has succeeded, returns it and charges nothing; an attempt awaiting
        the customer (requires_action) is cancelled at the provider first and the next attempt starts (unless the
        customer completed it meanwhile: then that payment is returned). Conflict invoice_not_payable,
        payment_method_required, awaiting_bank_transfer, payment_in_progress; ProviderUnavailable."""
        for _ in range(3):
            try:
                prepared = self._start_attempt(number)
            except IntegrityError:
                # A concurrent charge inserted its attempt first (the live-payment index): that one is the charge.
                existing = self._live_view(number)
                if existing is None:
                    raise Conflict(f"Invoice {number} is being charged by another worker; try again.",
                                   code="payment_in_progress") from None
                return existing
            if isinstance(prepared, dict):
                if prepared["state"] != "requires_action":
                    return prepared             # under way or paid
                superseded = self._supersede(number, prepared["id"])
                if superseded is not None:
                    return superseded           # the customer completed it first (or it is processing)
                continue                        # cancelled: the next attempt may start
            payment, provider, view, customer, method_id = prepared
            # ProviderUnavailable: the attempt stays processing (outcome unknown), no second attempt may start
            result = provider.charge(view, customer, method_id, payment.idempotency_key)
            return self.record_result(number, payment.id, result)
        raise Conflict(f"Invoice {number} is being charged by another worker; try again.", code="payment_in_progress")

    def _supersede(self, number: str, payment_id: int) -> dict[str, Any] | None:
        """Cancels an attempt awaiting the customer so that a new one may start. None when it is cancelled (now
        recorded failed); its view when the provider says it was paid or is processing (recorded so).
        ProviderUnavailable when the provider cannot be asked (the attempt stays as it is)."""
        with self.sessions() as session:
            row = session.get(Payment, payment_id)
            assert row is not None
            if row.state != "requires_action":
                return payment_view(row, number) if row.state in LIVE_PAYMENT_STATES else None
            provider_name, provider_id, code = row.provider, row.provider_payment_id, row.failure_code
        canceller = getattr(self.providers.get(provider_name), "cancel", None)
        if provider_id and canceller is None:
            raise Conflict(f"Invoice {number} has a payment awaiting the customer that {provider_name} cannot "
                           "cancel.", code="payment_in_progress")
        result: ChargeResult = canceller(provider_id) if provider_id and canceller is not None else \
            ChargeResult("failed", None, code, "Not completed by the customer; superseded by a new attempt.")
        if result.state == "failed":
            result = ChargeResult("failed", provider_id, code or result.failure_code, result.failure_message)
        view = self.record_result(number, payment_id, result, expect=("requires_action",))
        return None if view["state"] == "failed" else view

    def _start_attempt(self, number: str) -> dict[str, Any] | tuple[Payment, PaymentProvider, dict[str, Any], str, str]:
        """Inserts the next attempt as `processing` and commits; or the live payment's view when there is one.
        IntegrityError when a concurrent charge inserted its attempt first."""
        now = self.now()
        with self.sessions.begin() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number)
                                      .options(selectinload(Invoice.lines))).first()
            if invoice is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            live = self._live(session, invoice.id)
            if live is not None:
                return payment_view(live, number)
            if invoice.status not in PAYABLE:
                raise Conflict(f"Invoice {number} is {invoice.status}; only an open or uncollectible invoice is "
                               "charged.", code="invoice_not_payable")
            if invoice.total_minor <= 0:
                raise Conflict(f"Invoice {number} has nothing to pay.", code="invoice_not_payable")
            method = session.scalars(select(PaymentMethod).where(PaymentMethod.account_id == invoice.account_id,
                                                                 PaymentMethod.is_default.is_(True))).first()
            if method is None:
                raise Conflict(f"Account {invoice.account_id} has no payment method on file.",
                               code="payment_method_required")
            if method.provider == "bank_transfer":
                raise Conflict(f"Account {invoice.account_id} pays by bank transfer: an admin marks invoice "
                               f"{number} paid when the transfer arrives.", code="awaiting_bank_transfer")
            provider = self.provider(method.provider)
            last = session.scalars(select(func.max(Payment.attempt)).where(Payment.invoice_id == invoice.id)).one()
            attempt = (last or 0) + 1
            payment = Payment(invoice_id=invoice.id, account_id=invoice.account_id, provider=method.provider,
                              payment_method_id=method.id, attempt=attempt, amount_minor=invoice.total_minor,
                              refunded_minor=0, currency=invoice.currency, state="processing",
                              idempotency_key=f"invoice-{number}-attempt-{attempt}", created_at=now, updated_at=now)
            session.add(payment)
            view = self.invoicer.view(invoice)
            session.flush()
            return payment, provider, view, method.provider_customer_id or "", method.provider_method_id or ""

    def record_result(self, number: str, payment_id: int, result: ChargeResult,
                      expect: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Records a provider's answer on an attempt (under its row lock) and pays the invoice on success; the
        payment's view. `expect`: only from these states (else the row is returned as it is: someone else
        recorded first). An attempt requiring action keeps the client secret and link it has when the new answer
        carries none (a webhook does not); any other state drops them."""
        now = self.now()
        with self.sessions.begin() as session:
            row = session.get(Payment, payment_id, with_for_update=True)
            assert row is not None
            if expect is not None and row.state not in expect:
                return payment_view(row, number)
            row.state = result.state
            row.provider_payment_id = result.provider_id or row.provider_payment_id
            row.failure_code = result.failure_code
            row.failure_message = result.failure_message
            if result.state == "requires_action":
                row.client_secret = result.client_secret or row.client_secret
                row.action_url = (result.action_url or row.action_url
                                  or (self.action_url.replace("{invoice}", number) if self.action_url else None))
            else:
                row.client_secret = row.action_url = None
            row.updated_at = now
            session.add(AuditEntry(at=now, actor=f"payments:{row.provider}", action="payment.attempt",
                                   account_id=row.account_id,
                                   details={"invoice": number, "attempt": row.attempt, "state": row.state,
                                            "amount_minor": row.amount_minor, "currency": row.currency,
                                            "failure_code": row.failure_code}))
            result_view = payment_view(row, number)
        if result.state == "succeeded":
            self.invoicer.set_status(number, "paid", at=now, actor=f"payments:{result_view['provider']}")
            self._paid(number)
        return result_view

    def pending_action(self, number: str) -> dict[str, Any]:
        """What the customer's confirmation page needs for an attempt awaiting them: {invoice, provider,
        provider_payment_id, client_secret (Stripe.js confirmCardPayment; None for PayPal), action_url,
        amount_minor, currency}. NotFound invoice_not_found; Conflict no_action_required when no attempt awaits
        the customer. The client secret is for the account's own members only: never log or email it."""
        with self.sessions() as session:
            invoice_id = session.scalars(select(Invoice.id).where(Invoice.number == number)).first()
            if invoice_id is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            live = self._live(session, invoice_id)
            if live is None or live.state != "requires_action":
                raise Conflict(f"No payment of invoice {number} awaits the customer's confirmation.",
                               code="no_action_required")
            return {"invoice": number, "provider": live.provider, "provider_payment_id": live.provider_payment_id,
                    "client_secret": live.client_secret, "action_url": live.action_url,
                    "amount_minor": live.amount_minor, "currency": live.currency}

    def _paid(self, number: str) -> None:
        for hook in self.on_paid:
            hook(number)

    def reconcile(self, older_than_s: float = RECONCILE_AFTER_S) -> dict[str, int]:
        """Attempts left `processing` or `requires_action` for `older_than_s` are settled by asking the provider
        (billing.payments.reconcile.charges); {settled, not_received, unreachable}."""
        return reconciliation.charges(self, self.now() - timedelta(seconds=older_than_s))

    def reconcile_refunds(self, older_than_s: float = RECONCILE_AFTER_S) -> dict[str, int]:
        """Refunds left `pending` without an answer for `older_than_s` are settled by asking the provider
        (billing.payments.reconcile.refunds); {settled, resent, failed, unreachable}."""
        return reconciliation.refunds(self, self.now() - timedelta(seconds=older_than_s))

    def apply_provider_update(self, provider: str, provider_payment_id: str, result: ChargeResult,
                              idempotency_key: str | None = None, account_id: str | None = None) -> bool:
        """A provider's word on a payment (a webhook): records the state of the payment with that provider id,
        when it still moves (processing / requires_action -> succeeded | failed); False when there is no such
        payment or it is settled already (a replayed or late event changes nothing)."""
        with self.sessions() as session:
            row = session.scalars(select(Payment).where(Payment.provider == provider,
                                                        Payment.provider_payment_id == provider_payment_id)).first()
            if row is None and idempotency_key and account_id:   # the attempt's outcome was never recorded (a crash)
                row = session.scalars(select(Payment).where(
                    Payment.provider == provider, Payment.idempotency_key == idempotency_key,
                    Payment.account_id == account_id, Payment.provider_payment_id.is_(None))).first()
            if row is None or row.state not in ("processing", "requires_action", "pending"):
                return False
            payment_id = row.id
            number = session.scalars(select(Invoice.number).where(Invoice.id == row.invoice_id)).one()
        self.record_result(number, payment_id, result)
        return True

    def mark_paid_by_bank_transfer(self, number: str, reference: str, *, actor: str = "admin") -> dict[str, Any]:
        """An admin records the transfer that paid an open invoice (its bank reference) and the invoice is paid.
        An attempt awaiting the customer is cancelled at the provider first (Conflict payment_in_progress when the
        customer completed it meanwhile). InvalidInput bad_reference; NotFound invoice_not_found; Conflict
        payment_in_progress, invoice_not_payable."""
        reference = check_reference(reference)
        live = self.payment_for(number)
        if live is not None and live["state"] == "requires_action":     # cancelled first: never paid twice
            completed = self._supersede(number, live["id"])
            if completed is not None:
                raise Conflict(f"Invoice {number}'s {completed['provider']} payment awaiting the customer was "
                               f"{completed['state']} meanwhile; nothing recorded.", code="payment_in_progress")
        now = self.now()
        try:
            with self.sessions.begin() as session:
                invoice = session.scalars(select(Invoice).where(Invoice.number == number)).first()
                if invoice is None:
                    raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
                if self._live(session, invoice.id) is not None:
                    raise Conflict(f"Invoice {number} already has a payment under way or paid.",
                                   code="payment_in_progress")
                if invoice.status not in PAYABLE:
                    raise Conflict(f"Invoice {number} is {invoice.status}; only an open or uncollectible invoice is "
                                   "paid.", code="invoice_not_payable")
                last = session.scalars(select(func.max(Payment.attempt)).where(Payment.invoice_id == invoice.id)).one()
                attempt = (last or 0) + 1
                payment = Payment(invoice_id=invoice.id, account_id=invoice.account_id, provider="bank_transfer",
                                  attempt=attempt, amount_minor=invoice.total_minor, refunded_minor=0,
                                  currency=invoice.currency, state="succeeded", provider_payment_id=reference,
                                  idempotency_key=f"invoice-{number}-attempt-{attempt}", created_at=now,
                                  updated_at=now)
                session.add(payment)
                session.add(AuditEntry(at=now, actor=actor, action="payment.bank_transfer",
                                       account_id=invoice.account_id,
                                       details={"invoice": number, "reference": reference,
                                                "amount_minor": invoice.total_minor}))
                session.flush()
                view = payment_view(payment, number)
        except IntegrityError:
            raise Conflict(f"Invoice {number} already has a payment under way or paid.",
                           code="payment_in_progress") from None
        self.invoicer.set_status(number, "paid", at=now, actor=actor)
        self._paid(number)
        return view

    # -- refunds -------------------------------------------------------------------------------------------------
    def refund(self, number: str, amount_minor: int, *, reason: str = "", actor: str = "admin") -> dict[str, Any]:
        """Refunds part or all of what was paid for the invoice, with a credit note; the refund's view with the
        payment. InvalidInput (bad_amount, refund_exceeds_payment: more than is still refundable), Conflict
        (nothing_to_refund, refund_failed: the provider refused it). ProviderUnavailable: the refund stays
        pending (reserved) and the payments round completes it (reconcile_refunds)."""
        reserved = refund_book.reserve(self.sessions, number, amount_minor, reason, actor, self.now())
        provider = self.provider(reserved.provider)
        result = provider.refund(reserved.provider_payment_id, amount_minor, reserved.idempotency_key)
        view = refund_book.record(self.sessions, reserved.refund_id, result, self.now())
        if view["state"] == "failed":
            raise Conflict(f"The provider refused the refund of invoice {number}: {view['failure_message']}",
                           code="refund_failed")
        return view | {"payment": self.payment_for(number)}

    # -- reading -------------------------------------------------------------------------------------------------
    def payment_for(self, number: str) -> dict[str, Any] | None:
        """The invoice's live payment (under way, succeeded or refunded), if any."""
        with self.sessions() as session:
            invoice_id = session.scalars(select(Invoice.id).where(Invoice.number == number)).first()
            if invoice_id is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            live = self._live(session, invoice_id)
            return None if live is None else payment_view(live, number)

    def attempts(self, number: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            invoice_id = session.scalars(select(Invoice.id).where(Invoice.number == number)).first()
            if invoice_id is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            return [payment_view(p, number) for p in session.scalars(
                select(Payment).where(Payment.invoice_id == invoice_id).order_by(Payment.attempt))]

    def history(self, account_id: str) -> list[dict[str, Any]]:
        """The account's payments, newest first (NotFound for an unknown account)."""
        with self.sessions() as session:
            self._known_account(session, account_id)
            rows = session.execute(select(Payment, Invoice.number).join(Invoice, Invoice.id == Payment.invoice_id)
                                   .where(Payment.account_id == account_id)
                                   .order_by(Payment.created_at.desc(), Payment.id.desc()))
            return [payment_view(p, n) for p, n in rows]

    def refunds(self, account_id: str) -> list[dict[str, Any]]:
        """The account's refunds (pending, succeeded, failed), newest first (NotFound for an unknown account)."""
        with self.sessions() as session:
            self._known_account(session, account_id)
            rows = session.execute(select(Refund, Invoice.number, Payment.currency, CreditNote.reason)
                                   .join(Payment, Payment.id == Refund.payment_id)
                                   .join(Invoice, Invoice.id == Payment.invoice_id)
                                   .outerjoin(CreditNote, CreditNote.number == Refund.credit_note_number)
                                   .where(Payment.account_id == account_id)
                                   .order_by(Refund.created_at.desc(), Refund.id.desc()))
            return [refund_view(r, n, c, note_reason) for r, n, c, note_reason in rows]

    def account_credit_notes(self, account_id: str) -> list[dict[str, Any]]:
        """The account's credit notes, newest first (NotFound for an unknown account)."""
        with self.sessions() as session:
            self._known_account(session, account_id)
            rows = session.execute(select(CreditNote, Invoice.number).join(Invoice, Invoice.id == CreditNote.invoice_id)
                                   .where(Invoice.account_id == account_id)
                                   .order_by(CreditNote.created_at.desc(), CreditNote.id.desc()))
            return [credit_note_view(n, number) for n, number in rows]

    def statement(self, account_id: str) -> dict[str, Any]:
        """`aihub payments ACCOUNT`: {account, payments, refunds, credit_notes}, each newest first."""
        return {"account": account_id, "payments": self.history(account_id), "refunds": self.refunds(account_id),
                "credit_notes": self.account_credit_notes(account_id)}

    def credit_notes(self, number: str) -> list[dict[str, Any]]:
        """The invoice's credit notes, oldest first."""
        with self.sessions() as session:
            rows = session.scalars(select(CreditNote).join(Invoice, Invoice.id == CreditNote.invoice_id)
                                   .where(Invoice.number == number).order_by(CreditNote.id))
            return [credit_note_view(n, number) for n in rows]

    def balance(self, number: str) -> dict[str, Any]:
        """What the invoice comes to after its payment and refunds (credit notes)."""
        with self.sessions() as session:
            invoice = session.scalars(select(Invoice).where(Invoice.number == number)).first()
            if invoice is None:
                raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
            live = self._live(session, invoice.id)
            credited = session.scalars(select(func.coalesce(func.sum(CreditNote.amount_minor), 0))
                                       .where(CreditNote.invoice_id == invoice.id)).one()
            paid = 0 if live is None or live.state not in (*REFUNDABLE, "refunded") else live.amount_minor
            refunded = 0 if live is None else live.refunded_minor
            return {"invoice": number, "currency": invoice.currency, "total_minor": invoice.total_minor,
                    "credited_minor": int(credited), "paid_minor": paid, "refunded_minor": refunded,
                    "due_minor": max(invoice.total_minor - int(credited) - (paid - refunded), 0)}
