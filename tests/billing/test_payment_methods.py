"""Adding a payment method by id: the id's format is checked locally, anything that looks like a card number is
refused and goes nowhere (no provider call, no row, no log line, no audit entry, not in the error), and a method on
file for another account is refused before the provider is called."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.errors import Conflict, InvalidInput, NotFound
from billing.invoicing import Invoicer
from billing.payments.methods import check_method_id, looks_like_card_number
from billing.payments.provider import ChargeResult, MethodDetails, RefundResult
from billing.payments.service import PaymentService

CARD_NUMBERS = ("4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242", " 378282246310005 ",
                "6011111111111117", "4000 0025 0000 3155", "pm_4242424242424242", "card:5555555555554444",
                "424242424242")


class Spy:
    """A provider that records every call: nothing may reach it for a refused id."""

    name = "stripe"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def create_customer(self, account: Mapping[str, Any]) -> str:
        self.calls.append(("create_customer", (account["id"],)))
        return f"cus_{account['id']}"

    def attach_payment_method(self, customer: str, payment_method: str) -> MethodDetails:
        self.calls.append(("attach_payment_method", (customer, payment_method)))
        return MethodDetails(payment_method, "visa", "4242")

    def charge(self, invoice: Mapping[str, Any], customer: str, payment_method: str,
               idempotency_key: str) -> ChargeResult:
        raise AssertionError("not charged in these tests")

    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        raise AssertionError("not refunded in these tests")


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def spied(db: sessionmaker[Session], invoicer: Invoicer, service: AccountService, spy: Spy) -> PaymentService:
    paypal = Spy()
    paypal.name = "paypal"
    return PaymentService(db, invoicer, {"stripe": spy, "paypal": paypal}, clock=service.clock)


def dump(db: sessionmaker[Session]) -> str:
    with db() as session:
        names = inspect(session.get_bind()).get_table_names()
        return json.dumps({name: [list(map(str, row)) for row in session.execute(text(f'SELECT * FROM "{name}"'))]
                           for name in names})


def digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def test_the_shapes() -> None:
    for number in CARD_NUMBERS:
        assert looks_like_card_number(number), number
    for fine in ("pm_1MqLiJLkdIwHu7ixUEgbFdYF", "pm_card_visa", "8kk8451t", "card:9ab3c1def", "12345678901"):
        assert not looks_like_card_number(fine), fine
    assert check_method_id("stripe", " pm_1MqLiJLkdIwHu7ix ") == "pm_1MqLiJLkdIwHu7ix"
    assert check_method_id("paypal", "card:9ab3c1def") == "card:9ab3c1def"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_card_numbers_are_refused_before_anything_is_sent(spied: PaymentService, spy: Spy, service: AccountService,
                                                          db: sessionmaker[Session],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    account = str(service.create_account("Careful", "free").account["id"])
    caplog.set_level(logging.DEBUG)
    for number in CARD_NUMBERS:
        for provider in ("stripe", "paypal"):
            with pytest.raises(InvalidInput) as refused:
                spied.add_payment_method(account, number, provider=provider)
            assert refused.value.code == "card_number_refused" and refused.value.status == 400
            assert "card number" in refused.value.message and digits(number) not in digits(refused.value.message)
    assert spy.calls == [] and spied.providers["paypal"].calls == []     # type: ignore[attr-defined]
    stored = dump(db)
    logged = caplog.text
    for number in CARD_NUMBERS:
        assert digits(number) not in digits(stored) and digits(number) not in digits(logged)
    assert spied.payment_methods(account) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_method_ids_are_checked_locally(spied: PaymentService, spy: Spy, service: AccountService) -> None:
    account = str(service.create_account("Typo", "free").account["id"])
    for provider, bad in (("stripe", "card_1N3T00LkdIwHu7ix"), ("stripe", "pi_3MtwBwLkdIwHu7ix"), ("stripe", "pm_"),
                          ("stripe", "pm_abc def"), ("stripe", ""), ("stripe", "pm_" + "a" * 300),
                          ("stripe", "pm_abc\tx"), ("paypal", "../v2/checkout/orders"), ("paypal", "x" * 37)):
        with pytest.raises(InvalidInput) as refused:
            spied.add_payment_method(account, bad, provider=provider)
        assert refused.value.code == "bad_payment_method", (provider, bad)
    with pytest.raises(InvalidInput) as unknown:
        spied.add_payment_method(account, "pm_abc", provider="venmo")
    assert unknown.value.code == "bad_provider"
    with pytest.raises(NotFound) as nobody:
        spied.add_payment_method("nosuchacct", "pm_abc")
    assert nobody.value.code == "account_not_found"
    assert spy.calls == []


def test_a_method_of_another_account_is_refused_before_the_provider(spied: PaymentService, spy: Spy,
                                                                    service: AccountService) -> None:
    first = str(service.create_account("First", "free").account["id"])
    second = str(service.create_account("Second", "free").account["id"])
    assert spied.add_payment_method(first, "pm_shared1")["provider_method_id"] == "pm_shared1"
    calls = list(spy.calls)
    with pytest.raises(Conflict) as taken:
        spied.add_payment_method(second, "pm_shared1")
    assert taken.value.code == "payment_method_in_use"
    assert spy.calls == calls                            # no customer made for `second`, nothing attached
    assert spied.payment_methods(second) == []

    # The account's own method again: made the default again, without asking the provider.
    spied.add_payment_method(first, "pm_other22")
    assert [m["default"] for m in spied.payment_methods(first)] == [False, True]
    spied.add_payment_method(first, "pm_shared1")
    assert [m["default"] for m in spied.payment_methods(first)] == [True, False]
    assert len(spy.calls) == len(calls) + 1              # only pm_other22 was attached


def test_cli_refuses_a_card_number_and_never_prints_it(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from gateway.cli import main
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_never_called")
    monkeypatch.setenv("AIHUB_STRIPE_API_BASE", "http://127.0.0.1:9")       # nothing listens: never reached
    assert main(["create-account", "--name", "Cli", "--plan", "free", "--id", "clicard"]) == 0
    capsys.readouterr()
    assert main(["payment-method", "add", "clicard", "4242 4242 4242 4242"]) == 2
    out, err = capsys.readouterr()
    assert "card number" in err and "4242" not in out + err
    assert main(["audit-log", "--account", "clicard", "--json"]) == 0
    assert "4242" not in capsys.readouterr().out
