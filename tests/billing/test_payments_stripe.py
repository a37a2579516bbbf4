"""Payments against a real localstripe (started once per session): charge, decline, retry, requires_action,
partial and full refunds with credit notes, bank transfer, and two processes charging one invoice at once.

Card numbers appear here only, to create test payment methods in localstripe; the code under test sees `pm_...`
ids and the database stores brand and last 4 digits, never a number."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.models import Invoice, Payment
from billing.errors import Conflict, InvalidInput
from billing.invoicing import Invoicer, Seller
from billing.payments.provider import PaymentDeclined
from billing.payments.service import PaymentService
from billing.payments.stripe_provider import StripeProvider, StripeSettings
from billing.tax import load_tax_table
from gateway.catalog import load_catalog
from gateway.errors import ConfigError
from gateway.settings import ROOT
from tests.quota.conftest import YEAR, PinnedClock

SELLER = Seller("AI Hub GmbH", "Example Str. 1, Berlin", "DE", "DE123456789")
PERIOD = f"{YEAR}-11"
KEY = "sk_test_localstripe"
VISA = "4242424242424242"
DECLINED = "4000000000000002"            # generic decline: localstripe (like Stripe) refuses it when attached
CHARGE_FAILS = "4000000000000341"        # attaches, then every charge is declined (card_declined)
NEEDS_3DS = "4000002500003155"           # attaches, the charge requires authentication


def card(client: stripe.StripeClient, number: str) -> str:
    """A card payment method in localstripe (tests only); returns its pm_ id."""
    method = client.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": YEAR + 3, "cvc": "123"}})
    return str(method.id)


def open_invoice(service: AccountService, invoicer: Invoicer) -> tuple[str, str]:
    """A Pro account (JP: no tax) billed 29.00 for the period; the clock then on the 2nd of the next month.
    Returns (account id, invoice number)."""
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    clock.set(f"{YEAR}-10-15T08:00:00")
    account = str(service.create_account("Payer", "pro", country="JP").account["id"])
    clock.set(f"{YEAR}-12-02T09:00:00")
    invoicer.close_period(PERIOD, {})
    [invoice] = [i for i in invoicer.history(account) if i["period"] == PERIOD]
    assert (invoice["status"], invoice["total_minor"], invoice["currency"]) == ("open", 2900, "USD")
    return account, invoice["number"]


def intents_of(client: stripe.StripeClient, customer: str) -> list[Any]:
    """The PaymentIntents localstripe holds for a customer (it ignores list filters: filtered here)."""
    return [pi for pi in client.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
            if pi.customer == customer]


def customer_of(db: sessionmaker[Session], account: str) -> str:
    """The account's Stripe customer id (decrypted by the ORM; the column holds it encrypted)."""
    from billing.db.models import PaymentCustomer
    with db() as session:
        return str(session.scalars(select(PaymentCustomer.customer_id).where(
            PaymentCustomer.account_id == account, PaymentCustomer.provider == "stripe")).one())


def raw_dump(db: sessionmaker[Session]) -> str:
    """Every row of every table, as text."""
    with db() as session:
        names = inspect(session.get_bind()).get_table_names()
        return json.dumps({name: [list(map(str, row)) for row in session.execute(text(f'SELECT * FROM "{name}"'))]
                           for name in names})


# -- charges ---------------------------------------------------------------------------------------------------


def test_charge_succeeds_and_pays_the_invoice(payments: PaymentService, service: AccountService,
                                              invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                              db: sessionmaker[Session]) -> None:
    account, number = open_invoice(service, invoicer)
    method = payments.add_payment_method(account, card(stripe_client, VISA))
    assert (method["brand"], method["last4"], method["default"]) == ("visa", "4242", True)

    payment = payments.charge_invoice(number)
    assert (payment["state"], payment["amount_minor"], payment["currency"], payment["attempt"]) == (
        "succeeded", 2900, "USD", 1)
    assert payment["idempotency_key"] == f"invoice-{number}-attempt-1"
    assert payment["provider_payment_id"].startswith("pi_")
    invoice = invoicer.get(number)
    assert (invoice["status"], invoice["paid_at"]) == ("paid", f"{YEAR}-12-02T09:00:00Z")

    [intent] = intents_of(stripe_client, customer_of(db, account))
    assert (intent.id, intent.status, intent.amount, intent.currency) == (
        payment["provider_payment_id"], "succeeded", 2900, "usd")
    assert intent.metadata["invoice"] == number

    # Charging a paid invoice again returns its payment and charges nothing.
    assert payments.charge_invoice(number)["id"] == payment["id"]
    assert len(intents_of(stripe_client, customer_of(db, account))) == 1
    assert payments.history(account) == [payments.payment_for(number)]
    dump = raw_dump(db)
    assert VISA not in dump and VISA[:6] + "******" not in dump


def test_decline_then_retry_with_a_new_card(payments: PaymentService, service: AccountService,
                                            invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                            db: sessionmaker[Session]) -> None:
    account, number = open_invoice(service, invoicer)
    # 4000000000000002 is declined as soon as it is attached: nothing is stored, nothing can be charged.
    with pytest.raises(PaymentDeclined) as declined:
        payments.add_payment_method(account, card(stripe_client, DECLINED))
    assert (declined.value.code, declined.value.status) == ("card_declined", 402)
    assert payments.payment_methods(account) == []
    with pytest.raises(Conflict) as required:
        payments.charge_invoice(number)
    assert required.value.code == "payment_method_required"

    # A card that attaches but whose charge is declined: a failed attempt, the invoice stays open.
    payments.add_payment_method(account, card(stripe_client, CHARGE_FAILS))
    failed = payments.charge_invoice(number)
    assert (failed["state"], failed["failure_code"], failed["attempt"]) == ("failed", "card_declined", 1)
    assert failed["failure_message"]
    assert invoicer.get(number)["status"] == "open"

    # A new good card: the retry is attempt 2 with its own idempotency key, and it pays the invoice.
    payments.add_payment_method(account, card(stripe_client, VISA))
    paid = payments.charge_invoice(number)
    assert (paid["state"], paid["attempt"], paid["idempotency_key"]) == (
        "succeeded", 2, f"invoice-{number}-attempt-2")
    assert invoicer.get(number)["status"] == "paid"
    assert [(a["attempt"], a["state"]) for a in payments.attempts(number)] == [(1, "failed"), (2, "succeeded")]
    intents = intents_of(stripe_client, customer_of(db, account))
    assert sorted(pi.status for pi in intents) == ["requires_payment_method", "succeeded"]
    assert [m["default"] for m in payments.payment_methods(account)] == [False, True]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_authentication_required_does_not_block_the_next_attempt(payments: PaymentService, service: AccountService,
                                                                 invoicer: Invoicer,
                                                                 stripe_client: stripe.StripeClient) -> None:
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, NEEDS_3DS))
    payment = payments.charge_invoice(number)
    assert (payment["state"], payment["failure_code"]) == ("requires_action", "authentication_required")
    assert invoicer.get(number)["status"] == "open"
    # The next charge cancels the intent awaiting the customer (so it can never be paid too) and tries again.
    again = payments.charge_invoice(number)
    assert (again["attempt"], again["state"]) == (2, "requires_action")
    assert stripe_client.v1.payment_intents.retrieve(payment["provider_payment_id"]).status == "canceled"
    assert [a["state"] for a in payments.attempts(number)] == ["failed", "requires_action"]


def test_no_payment_method_is_refused(payments: PaymentService, service: AccountService,
                                      invoicer: Invoicer) -> None:
    _, number = open_invoice(service, invoicer)
    with pytest.raises(Conflict) as refused:
        payments.charge_invoice(number)
    assert refused.value.code == "payment_method_required"


# -- refunds ---------------------------------------------------------------------------------------------------


def test_partial_then_full_refund_with_credit_notes(payments: PaymentService, service: AccountService,
                                                    invoicer: Invoicer, stripe_client: stripe.StripeClient) -> None:
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, VISA))
    intent = payments.charge_invoice(number)["provider_payment_id"]

    partial = payments.refund(number, 1000, reason="Service outage on the 3rd")
    assert (partial["state"], partial["credit_note"]) == ("succeeded", f"CN-{YEAR}-000001")
    assert partial["provider_refund_id"].startswith("re_")
    assert (partial["payment"]["state"], partial["payment"]["refunded_minor"]) == ("partially_refunded", 1000)

    with pytest.raises(InvalidInput) as too_much:
        payments.refund(number, 1901)
    assert too_much.value.code == "refund_exceeds_payment" and "1900" in too_much.value.message
    with pytest.raises(InvalidInput) as bad:
        payments.refund(number, 0)
    assert bad.value.code == "bad_amount"

    full = payments.refund(number, 1900)
    assert (full["credit_note"], full["payment"]["state"], full["payment"]["refunded_minor"]) == (
        f"CN-{YEAR}-000002", "refunded", 2900)
    with pytest.raises(InvalidInput) as nothing_left:
        payments.refund(number, 1)
    assert nothing_left.value.code == "refund_exceeds_payment"

    assert [(n["number"], n["amount_minor"], n["currency"]) for n in payments.credit_notes(number)] == [
        (f"CN-{YEAR}-000001", 1000, "USD"), (f"CN-{YEAR}-000002", 1900, "USD")]
    assert payments.balance(number) == {"invoice": number, "currency": "USD", "total_minor": 2900,
                                        "credited_minor": 2900, "paid_minor": 2900, "refunded_minor": 2900,
                                        "due_minor": 0}
    refunds = stripe_client.v1.refunds.list({"payment_intent": intent})
    assert sorted(r.amount for r in refunds.data) == [1000, 1900]
    # A refunded invoice is still not charged again.
    assert payments.charge_invoice(number)["state"] == "refunded"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_refund_of_an_unpaid_invoice_is_refused(payments: PaymentService, service: AccountService,
                                                invoicer: Invoicer) -> None:
    _, number = open_invoice(service, invoicer)
    with pytest.raises(Conflict) as refused:
        payments.refund(number, 100)
    assert refused.value.code == "nothing_to_refund"


# -- bank transfer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bank_transfer_marked_paid_by_an_admin(payments: PaymentService, service: AccountService,
                                               invoicer: Invoicer) -> None:
    account, number = open_invoice(service, invoicer)
    payments.enable_bank_transfer(account)
    with pytest.raises(Conflict) as waiting:
        payments.charge_invoice(number)
    assert waiting.value.code == "awaiting_bank_transfer"
    with pytest.raises(InvalidInput):
        payments.mark_paid_by_bank_transfer(number, "  ")
    paid = payments.mark_paid_by_bank_transfer(number, "SEPA 2026-12-02 REF 8841")
    assert (paid["provider"], paid["state"], paid["provider_payment_id"]) == (
        "bank_transfer", "succeeded", "SEPA 2026-12-02 REF 8841")
    assert invoicer.get(number)["status"] == "paid"
    with pytest.raises(Conflict):
        payments.mark_paid_by_bank_transfer(number, "again")
    refund = payments.refund(number, 2900, reason="Paid twice by the customer")
    assert (refund["payment"]["state"], refund["credit_note"]) == ("refunded", f"CN-{YEAR}-000001")


# -- at most one successful charge -----------------------------------------------------------------------------


def test_the_live_payment_index_allows_one_per_invoice(payments: PaymentService, service: AccountService,
                                                       invoicer: Invoicer, db: sessionmaker[Session]) -> None:
    account, number = open_invoice(service, invoicer)
    now = datetime.now(UTC)
    with db() as session:
        invoice_id = session.scalars(select(Invoice.id).where(Invoice.number == number)).one()

    def row(attempt: int, state: str) -> Payment:
        return Payment(invoice_id=invoice_id, account_id=account, provider="stripe", attempt=attempt,
                       amount_minor=2900, refunded_minor=0, currency="USD", state=state,
                       idempotency_key=f"k-{number}-{attempt}", created_at=now, updated_at=now)

    with db.begin() as session:
        session.add_all([row(1, "failed"), row(2, "failed"), row(3, "processing")])
    for state in ("processing", "succeeded", "requires_action", "refunded"):
        with pytest.raises(IntegrityError), db.begin() as session:
            session.add(row(10, state))


def test_the_provider_ignores_idempotency_keys(stripe_settings: StripeSettings,
                                               stripe_client: stripe.StripeClient) -> None:
    """Why the database guard is needed: the same key twice is two charges at localstripe."""
    provider = StripeProvider(stripe_settings)
    customer = provider.create_customer({"id": "acct_idem", "name": "Idempotency"})
    method = provider.attach_payment_method(customer, card(stripe_client, VISA)).provider_method_id
    invoice = {"number": "AH-TEST-000001", "account": "acct_idem", "total_minor": 500, "currency": "EUR"}
    first = provider.charge(invoice, customer, method, "same-key")
    second = provider.charge(invoice, customer, method, "same-key")
    assert first.state == second.state == "succeeded" and first.provider_id != second.provider_id


def _charge_in_process(url: str, settings: StripeSettings, number: str, barrier: Any, results: Any) -> None:
    """One worker process: its own engine and Stripe client; waits for the other, then charges the invoice."""
    engine = make_engine(url)
    try:
        catalog = load_catalog(ROOT / "config" / "catalog.toml")
        invoicer = Invoicer(sessions(engine), catalog, load_tax_table(ROOT / "config" / "tax.toml"), SELLER)
        service = PaymentService(sessions(engine), invoicer, {"stripe": StripeProvider(settings)})
        barrier.wait(30)
        payment = service.charge_invoice(number)
        results.put((payment["id"], payment["state"]))
    except BaseException as exc:
        results.put(("error", repr(exc)))
    finally:
        engine.dispose()


def test_two_processes_charge_one_invoice_once(payments: PaymentService, service: AccountService,
                                               invoicer: Invoicer, stripe_client: stripe.StripeClient,
                                               stripe_settings: StripeSettings, database_url: str,
                                               db: sessionmaker[Session]) -> None:
    account, number = open_invoice(service, invoicer)
    payments.add_payment_method(account, card(stripe_client, VISA))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [context.Process(target=_charge_in_process,
                               args=(database_url, stripe_settings, number, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert all(o[0] != "error" for o in outcomes), outcomes
    assert {o[0] for o in outcomes} == {payments.payment_for(number)["id"]}   # both answer with the one payment

    intents = intents_of(stripe_client, customer_of(db, account))
    assert [pi.status for pi in intents] == ["succeeded"]
    with db() as session:
        rows = session.scalars(select(Payment.state)).all()
    assert rows == ["succeeded"]
    assert invoicer.get(number)["status"] == "paid"


def test_settings_come_from_the_environment() -> None:
    settings = StripeSettings.from_env({"STRIPE_SECRET_KEY": "sk_test_x", "AIHUB_STRIPE_API_BASE": "http://h:1/"})
    assert (settings.api_base, settings.automatic_payment_methods) == ("http://h:1", False)
    assert "sk_test_x" not in repr(settings)
    with pytest.raises(ConfigError):
        StripeSettings.from_env({})
    with pytest.raises(ConfigError):
        StripeSettings.from_env({"STRIPE_SECRET_KEY": "k", "AIHUB_STRIPE_API_BASE": "ftp://x"})
