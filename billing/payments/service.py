"""Collecting invoices: every attempt recorded before and after the provider is called.

`charge_invoice(number)` inserts the attempt as a `processing` payment and commits *before* calling the provider.
A partial unique index on payments (one payment per invoice in processing, requires_action, succeeded,
partially_refunded or refunded: `uq_payments_invoice_live`) makes a second, concurrent charge fail to insert; it
then returns the payment already under way instead of calling the provider. So an invoice is charged at most once
even when two workers run at once and even against a provider that ignores idempotency keys (localstripe). The
provider is also given the attempt's idempotency key, `invoice-<number>-attempt-<n>`, so a retried request of the
same attempt (network retry) is not a second charge at Stripe. A decline records the attempt `failed`, which frees
the invoice: the next charge is attempt n+1. When the provider cannot be reached the attempt stays `processing`
(its outcome is unknown) and no new attempt can start until it is resolved (webhooks, issue 10).

`refund(number, amount_minor)` records a `pending` refund under the payment's row lock (so concurrent refunds
cannot exceed what was paid), calls the provider, then issues a credit note (`CN-<year>-<000001>`, gap-free per
year from credit_note_counters, row-locked) and moves the payment to partially_refunded or refunded.
Money is integer minor units throughout.
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
    CreditNoteCounter,
    Invoice,
    Payment,
    PaymentCustomer,
    PaymentMethod,
    Refund,
)
from billing.errors import Conflict, InvalidInput, NotFound
from billing.invoicing import Invoicer
from billing.payments.bank_transfer import check_reference
from billing.payments.provider import ChargeResult, PaymentProvider, ProviderUnavailable
from billing.times import iso

PAYABLE = ("open", "uncollectible")
REFUNDABLE = ("succeeded", "partially_refunded")
MAX_REASON = 300


def payment_view(payment: Payment, number: str) -> dict[str, Any]:
    return {"id": payment.id, "invoice": number, "account": payment.account_id, "provider": payment.provider,
            "attempt": payment.attempt, "amount_minor": payment.amount_minor,
            "refunded_minor": payment.refunded_minor, "currency": payment.currency, "state": payment.state,
            "provider_payment_id": payment.provider_payment_id, "failure_code": payment.failure_code,
            "failure_message": payment.failure_message, "idempotency_key": payment.idempotency_key,
            "created_at": iso(payment.created_at), "updated_at": iso(payment.updated_at)}


def method_view(method: PaymentMethod) -> dict[str, Any]:
    return {"id": method.id, "account": method.account_id, "provider": method.provider,
            "provider_method_id": method.provider_method_id, "brand": method.brand, "last4": method.last4,
            "default": method.is_default, "created_at": iso(method.created_at)}


class PaymentService:
    def __init__(self, sessions: sessionmaker[Session], invoicer: Invoicer,
                 providers: Mapping[str, PaymentProvider], clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.invoicer = invoicer
        self.providers = dict(providers)
        self.clock = clock
        self.on_paid: list[Callable[[str], None]] = []     # called with the invoice number once it is paid

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _provider(self, name: str) -> PaymentProvider:
        provider = self.providers.get(name)
        if provider is None:
            raise Conflict(f"The payment provider {name!r} is not configured.", code="provider_not_configured")
        return provider

    # -- payment methods -----------------------------------------------------------------------------------------
    def _customer(self, account_id: str, provider_name: str) -> str:
        """The account's customer at the provider, created on first use (one per account and provider)."""
        with self.sessions() as session:
            account = session.get(Account, account_id)
            if account is None:
                raise NotFound(f"No account {account_id!r}.", code="account_not_found")
            known = session.get(PaymentCustomer, (account_id, provider_name))
            if known is not None:
                return known.customer_id
            details = {"id": account.id, "name": account.name, "billing_email": account.billing_email}
        customer_id = self._provider(provider_name).create_customer(details)
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

    def add_payment_method(self, account_id: str, provider_method_id: str, *, provider: str = "stripe",
                           make_default: bool = True, actor: str = "admin") -> dict[str, Any]:
        """Attaches the provider's payment method (its id, e.g. `pm_...` from a SetupIntent) to the account's
        customer and records it; PaymentDeclined (card_declined) when the provider refuses it."""
        if provider == "bank_transfer":
            return self.enable_bank_transfer(account_id, make_default=make_default, actor=actor)
        if not provider_method_id or len(provider_method_id) > 255 or not provider_method_id.isascii():
            raise InvalidInput("A payment method is the provider's id, e.g. pm_...", code="bad_payment_method")
        customer = self._customer(account_id, provider)
        details = self._provider(provider).attach_payment_method(customer, provider_method_id)
        return self._record_method(account_id, provider, customer, details.provider_method_id, details.brand,
                                   details.last4, make_default, actor)

    def enable_bank_transfer(self, account_id: str, *, make_default: bool = True,
                             actor: str = "admin") -> dict[str, Any]:
        with self.sessions() as session:
            if session.get(Account, account_id) is None:
                raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        return self._record_method(account_id, "bank_transfer", None, f"bank:{account_id}", None, None,
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
        with self.sessions() as session:
            return [method_view(m) for m in session.scalars(
                select(PaymentMethod).where(PaymentMethod.account_id == account_id).order_by(PaymentMethod.id))]

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
        payment of the invoice is already under way or has succeeded, returns it and charges nothing."""
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
            return prepared             # already under way or paid
        payment, provider, view, customer, method_id = prepared
        try:
            result = provider.charge(view, customer, method_id, payment.idempotency_key)
        except ProviderUnavailable:
            raise        # the attempt stays processing: its outcome is unknown, no second attempt may start
        return self._record_result(number, payment.id, result)

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
            provider = self._provider(method.provider)
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

    def _record_result(self, number: str, payment_id: int, result: ChargeResult) -> dict[str, Any]:
        with self.sessions.begin() as session:
            row = session.get(Payment, payment_id, with_for_update=True)
            assert row is not None
            row.state = result.state
            row.provider_payment_id = result.provider_id
            row.failure_code = result.failure_code
            row.failure_message = result.failure_message
            row.updated_at = self.now()
            session.add(AuditEntry(at=self.now(), actor=f"payments:{row.provider}", action="payment.attempt",
                                   account_id=row.account_id,
                                   details={"invoice": number, "attempt": row.attempt, "state": row.state,
                                            "amount_minor": row.amount_minor, "currency": row.currency,
                                            "failure_code": row.failure_code}))
            result_view = payment_view(row, number)
        if result.state == "succeeded":
            self.invoicer.set_status(number, "paid", at=self.now(), actor=f"payments:{result_view['provider']}")
            self._paid(number)
        return result_view

    def _paid(self, number: str) -> None:
        for hook in self.on_paid:
            hook(number)

    def reconcile(self, older_than_s: float = 600.0) -> dict[str, int]:
        """Attempts left `processing` (the provider's answer was lost: unreachable, a crash) are settled by asking
        the provider for the attempt by its key; one it never received is recorded as failed (`not_received`), so
        collection and dunning go on. Providers without `find_attempt` are left to their webhooks."""
        cutoff = self.now() - timedelta(seconds=older_than_s)
        with self.sessions() as session:
            stuck = [(p.id, p.account_id, p.provider, p.idempotency_key, number) for p, number in session.execute(
                select(Payment, Invoice.number).join(Invoice, Invoice.id == Payment.invoice_id).where(
                    Payment.state == "processing", Payment.updated_at < cutoff))]
        counts = {"settled": 0, "not_received": 0, "unreachable": 0}
        for payment_id, account_id, provider_name, key, number in stuck:
            provider = self.providers.get(provider_name)
            finder = getattr(provider, "find_attempt", None)
            if finder is None:
                continue
            try:
                result = finder(self._customer(account_id, provider_name), key)
            except ProviderUnavailable:
                counts["unreachable"] += 1
                continue
            if result is None:
                result = ChargeResult("failed", None, "not_received", "the provider never received this charge")
                counts["not_received"] += 1
            elif result.state == "processing":
                continue
            else:
                counts["settled"] += 1
            self._record_result(number, payment_id, result)
        return counts

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
        self._record_result(number, payment_id, result)
        return True

    def mark_paid_by_bank_transfer(self, number: str, reference: str, *, actor: str = "admin") -> dict[str, Any]:
        """An admin records the transfer that paid an open invoice (its bank reference) and the invoice is paid."""
        reference = check_reference(reference)
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
        """Refunds part or all of what was paid for the invoice, with a credit note. Refusing more than is still
        refundable: InvalidInput (refund_exceeds_payment)."""
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
            raise InvalidInput("A refund is a positive whole number of minor units.", code="bad_amount")
        reason = (reason or "Refund").strip()[:MAX_REASON]
        now = self.now()
        try:
            with self.sessions.begin() as session:
                invoice = session.scalars(select(Invoice).where(Invoice.number == number)).first()
                if invoice is None:
                    raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
                payment = session.scalars(select(Payment).where(Payment.invoice_id == invoice.id,
                                                                Payment.state.in_(LIVE_PAYMENT_STATES))
                                          .with_for_update()).first()
                if payment is None or payment.state not in (*REFUNDABLE, "refunded"):
                    raise Conflict(f"Invoice {number} has no completed payment to refund.", code="nothing_to_refund")
                reserved = session.scalars(select(func.coalesce(func.sum(Refund.amount_minor), 0)).where(
                    Refund.payment_id == payment.id, Refund.state.in_(("pending", "succeeded")))).one()
                refundable = payment.amount_minor - int(reserved)
                if amount_minor > refundable:
                    raise InvalidInput(
                        f"Cannot refund {amount_minor} {payment.currency} minor units on invoice {number}: it was "
                        f"paid {payment.amount_minor} and {refundable} is still refundable.",
                        code="refund_exceeds_payment")
                count = session.scalars(select(func.count(Refund.id)).where(Refund.payment_id == payment.id)).one()
                refund = Refund(payment_id=payment.id, amount_minor=amount_minor, state="pending",
                                idempotency_key=f"invoice-{number}-refund-{count + 1}", created_at=now)
                session.add(refund)
                session.flush()
                refund_id, key = refund.id, refund.idempotency_key
                provider_name, provider_payment_id = payment.provider, payment.provider_payment_id or ""
        except IntegrityError:
            raise Conflict(f"Another refund of invoice {number} is being recorded; try again.",
                           code="refund_in_progress") from None
        provider = self._provider(provider_name)
        result = provider.refund(provider_payment_id, amount_minor, key)  # ProviderUnavailable: stays pending
        self._ensure_counter(now.year)
        with self.sessions.begin() as session:
            row = session.get(Refund, refund_id, with_for_update=True)
            assert row is not None
            row.provider_refund_id = result.provider_id
            if result.state == "failed":
                row.state = "failed"
                row.failure_message = result.failure_message
                failed = True
            else:
                failed = False
                row.state = result.state
                counter = session.scalars(select(CreditNoteCounter).where(CreditNoteCounter.year == now.year)
                                          .with_for_update()).one()
                counter.last += 1
                paid = session.get(Payment, row.payment_id, with_for_update=True)
                assert paid is not None
                note = CreditNote(number=f"CN-{now.year}-{counter.last:06d}", invoice_id=paid.invoice_id,
                                  amount_minor=amount_minor, currency=paid.currency, reason=reason, created_at=now)
                session.add(note)
                session.flush()
                row.credit_note_number = note.number
                paid.refunded_minor += amount_minor
                paid.state = "refunded" if paid.refunded_minor >= paid.amount_minor else "partially_refunded"
                paid.updated_at = now
                session.add(AuditEntry(at=now, actor=actor, action="payment.refund", account_id=paid.account_id,
                                       details={"invoice": number, "amount_minor": amount_minor,
                                                "credit_note": note.number, "payment_state": paid.state}))
            view = {"invoice": number, "amount_minor": amount_minor, "state": row.state,
                    "provider_refund_id": row.provider_refund_id, "credit_note": row.credit_note_number,
                    "failure_message": row.failure_message}
        if failed:
            raise Conflict(f"The provider refused the refund of invoice {number}: {result.failure_message}",
                           code="refund_failed")
        return view | {"payment": self.payment_for(number)}

    def _ensure_counter(self, year: int) -> None:
        with self.sessions() as session:
            if session.get(CreditNoteCounter, year) is not None:
                return
        try:
            with self.sessions.begin() as session:
                session.add(CreditNoteCounter(year=year, last=0))
        except IntegrityError:
            pass

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
        """The account's payments, newest first."""
        with self.sessions() as session:
            rows = session.execute(select(Payment, Invoice.number).join(Invoice, Invoice.id == Payment.invoice_id)
                                   .where(Payment.account_id == account_id)
                                   .order_by(Payment.created_at.desc(), Payment.id.desc()))
            return [payment_view(p, n) for p, n in rows]

    def credit_notes(self, number: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(CreditNote).join(Invoice, Invoice.id == CreditNote.invoice_id)
                                   .where(Invoice.number == number).order_by(CreditNote.id))
            return [{"number": n.number, "invoice": number, "amount_minor": n.amount_minor, "currency": n.currency,
                     "reason": n.reason, "created_at": iso(n.created_at)} for n in rows]

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
