"""A paid plan needs a payment method or bank transfer on every path that puts an account on one: an upgrade
(tests/billing/test_dunning.py), and creating the account (the service, `aihub create-account`, `make up`'s demo
accounts); AIHUB_REQUIRE_PAYMENT_METHOD=0 lifts it."""

from __future__ import annotations

import json
import os

import pytest

from billing.accounts import AccountService
from billing.errors import InvalidInput
from billing.payments.service import PaymentService


def test_creating_an_account_on_a_paid_plan_needs_a_payment_method(service: AccountService,
                                                                   payments: PaymentService) -> None:
    service.require_payment_method = True                 # what AIHUB_REQUIRE_PAYMENT_METHOD=1 (the default) sets
    for plan in ("pro", "enterprise"):
        with pytest.raises(InvalidInput) as refused:
            service.create_account("Eager", plan, account_id=f"eager{plan[:3]}")
        assert refused.value.code == "payment_method_required" and "paid" in refused.value.message
        assert not service.exists(f"eager{plan[:3]}")     # nothing was created

    created = service.create_account("Wired", "pro", account_id="wired", bank_transfer=True).account
    assert created["subscription"]["plan"] == "pro"
    [method] = payments.payment_methods("wired")
    assert (method["provider"], method["default"], method["provider_method_id"]) == ("bank_transfer", True,
                                                                                    "bank:wired")
    assert "payment_method.add" in [e["action"] for e in service.audit_log("wired")]
    assert service.create_account("Frugal", "free", account_id="frugal").account["subscription"]["plan"] == "free"

    service.require_payment_method = False                # AIHUB_REQUIRE_PAYMENT_METHOD=0
    assert service.create_account("Trusted", "pro", account_id="trusted").account["subscription"]["plan"] == "pro"


def test_cli_create_account_on_a_paid_plan(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["create-account", "--name", "Acme", "--plan", "pro", "--id", "acmepro"]) == 2
    assert "paid" in capsys.readouterr().err
    assert main(["show-account", "acmepro"]) == 2                        # not created
    capsys.readouterr()
    assert main(["create-account", "--name", "Acme", "--plan", "pro", "--id", "acmepro", "--bank-transfer",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"] == "pro"
    assert main(["payment-method", "list", "acmepro", "--json"]) == 0
    assert [m["provider"] for m in json.loads(capsys.readouterr().out)] == ["bank_transfer"]

    monkeypatch.setenv("AIHUB_REQUIRE_PAYMENT_METHOD", "0")
    assert main(["create-account", "--name", "Trusted", "--plan", "enterprise", "--id", "trusted"]) == 0


def test_make_up_seeds_its_paid_demo_accounts_with_bank_transfer(redis_url: str) -> None:
    from billing.store import open_accounts
    from billing_worker.payments import services
    from gateway.stack import resync_and_seed
    env = {**os.environ, "REDIS_URL": redis_url}
    seeded = resync_and_seed(env)
    assert [(account, plan) for account, plan, _ in seeded] == [("demofree", "free"), ("demopro", "pro"),
                                                                ("demoent", "enterprise")]
    assert all(key for _, _, key in seeded)
    assert all(key is None for _, _, key in resync_and_seed(env))         # a second start creates nothing
    store = open_accounts(env)
    try:
        payments, _ = services(store, env)
        assert [m["provider"] for m in payments.payment_methods("demopro")] == ["bank_transfer"]
        assert [m["provider"] for m in payments.payment_methods("demoent")] == ["bank_transfer"]
        assert payments.payment_methods("demofree") == []
        assert store.accounts.get_account("demoent")["subscription"]["plan"] == "enterprise"
    finally:
        store.close()
