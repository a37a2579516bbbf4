"""Secrets at rest: the database holds webhook signing secrets and provider customer ids only encrypted."""

from __future__ import annotations

import json

import stripe
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.payments.service import PaymentService
from tests.billing.test_payments_stripe import VISA, card


def raw_dump(db: sessionmaker[Session]) -> str:
    with db() as session:
        names = inspect(session.get_bind()).get_table_names()
        return json.dumps({name: [list(map(str, row)) for row in session.execute(text(f'SELECT * FROM "{name}"'))]
                           for name in names})


def test_no_secret_in_clear_in_the_database(service: AccountService, payments: PaymentService,
                                            stripe_client: stripe.StripeClient, db: sessionmaker[Session]) -> None:
    account = str(service.create_account("Secretive", "pro", country="JP").account["id"])
    secret = service.set_webhook(account, "https://hooks.example.com/aihub")
    assert secret is not None
    method = payments.add_payment_method(account, card(stripe_client, VISA))
    with db() as session:
        customer = session.execute(text("SELECT account_id FROM payment_customers")).scalar_one()
    dump = raw_dump(db)
    assert customer == account and secret not in dump and "cus_" not in dump
    assert "enc:v1:" in dump
    assert service.notification_settings(account)["webhook_url"] == "https://hooks.example.com/aihub"
    assert method["provider"] == "stripe" and payments.charge_invoice is not None
