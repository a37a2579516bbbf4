"""`aihub payments` and `aihub payment-method`: an unknown account is a clear error with exit status 2, and the
history lists payments, refunds and credit notes (text and --json)."""

from __future__ import annotations

import json

import pytest

from billing.invoicing import Invoicer, Seller
from billing.tax import load_tax_table
from gateway.settings import ROOT
from tests.quota.conftest import YEAR, PinnedClock


@pytest.fixture
def cli(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)


@pytest.mark.usefixtures("cli")
@pytest.mark.parametrize("argv", [["payments", "ghost"], ["payments", "ghost", "--json"],
                                  ["payment-method", "list", "ghost"], ["payment-method", "bank-transfer", "ghost"],
                                  ["payment-method", "add", "ghost", "pm_1MqLiJLkdIwHu7ix"],
                                  ["payment-method", "add", "ghost", "8kk8451t", "--provider", "paypal"],
                                  ["payments", "NOT VALID"]])
def test_an_unknown_account_is_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "No account" in err and "Traceback" not in err


@pytest.mark.usefixtures("cli")
def test_payments_lists_attempts_refunds_and_credit_notes(capsys: pytest.CaptureFixture[str]) -> None:
    from billing.store import open_accounts
    from gateway.catalog import load_catalog
    from gateway.cli import main
    store = open_accounts(clock=PinnedClock(f"{YEAR}-10-15T08:00:00"))
    try:
        store.accounts.create_account("Ledger", "pro", country="JP", account_id="ledger", bank_transfer=True)
        invoicer = Invoicer(store.accounts.sessions, load_catalog(ROOT / "config" / "catalog.toml"),
                            load_tax_table(ROOT / "config" / "tax.toml"), Seller("AI Hub", "", "DE", ""),
                            clock=PinnedClock(f"{YEAR}-12-02T09:00:00"))
        invoicer.close_period(f"{YEAR}-11", {})
        [number] = [i["number"] for i in invoicer.history("ledger")]
    finally:
        store.close()
    assert main(["payments", "ledger", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"account": "ledger", "payments": [], "refunds": [],
                                                   "credit_notes": []}
    assert main(["invoice", "mark-paid", number, "--reference", "SEPA-77"]) == 0
    assert main(["invoice", "refund", number, "--amount-minor", "500", "--reason", "Goodwill"]) == 0
    capsys.readouterr()

    assert main(["payments", "ledger", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    [payment] = shown["payments"]
    assert (payment["provider"], payment["state"], payment["refunded_minor"], payment["provider_payment_id"]) == (
        "bank_transfer", "partially_refunded", 500, "SEPA-77")
    [refund] = shown["refunds"]
    [note] = shown["credit_notes"]
    assert (refund["invoice"], refund["amount_minor"], refund["state"], refund["reason"]) == (
        number, 500, "succeeded", "Goodwill")
    assert refund["credit_note"] == note["number"] and note["number"].startswith("CN-")
    assert (note["invoice"], note["amount_minor"], note["currency"], note["reason"]) == (number, 500, "USD",
                                                                                        "Goodwill")
    assert main(["payments", "ledger"]) == 0
    text = capsys.readouterr().out
    assert "refunds:" in text and "credit_notes:" in text and note["number"] in text and "SEPA-77" in text
