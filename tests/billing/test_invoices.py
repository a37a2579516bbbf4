"""Golden invoices, each line to the cent (docs/billing.md), and the close's guarantees: one invoice per account
and period, gap-free numbers, the same lines on a re-run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import Invoice
from billing.invoicing import Invoicer, Seller
from billing.pricing import AccountUsage
from billing.tax import load_tax_table
from gateway.catalog import Catalog
from gateway.settings import ROOT
from tests.quota.conftest import YEAR, PinnedClock

PERIOD = f"{YEAR}-11"                      # 30 days
SELLER = Seller("AI Hub GmbH", "Example Str. 1, Berlin", "DE", "DE123456789")


@pytest.fixture
def invoicer(db: sessionmaker[Session], catalog: Catalog) -> Invoicer:
    return Invoicer(db, catalog, load_tax_table(ROOT / "config" / "tax.toml"), SELLER, net_days=14)


def at(service: AccountService, when: str) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    clock.set(when)


def new_account(service: AccountService, plan: str, when: str = f"{YEAR}-10-15T08:00:00", **kw: Any) -> str:
    at(service, when)
    return str(service.create_account(f"Golden {plan}", plan, **kw).account["id"])


def close_one(invoicer: Invoicer, account_id: str, usage: AccountUsage | None = None) -> dict[str, Any]:
    invoicer.close_period(PERIOD, {account_id: usage} if usage else {})
    [invoice] = [i for i in invoicer.for_period(PERIOD) if i["account"] == account_id]
    return invoice


def lines(invoice: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    return [(line["kind"], line["quantity"], line["unit_amount_minor"], line["amount_minor"])
            for line in invoice["lines"]]


def test_free_within_quota_is_a_paid_zero_statement(service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "free", country="JP")
    invoice = close_one(invoicer, account, AccountUsage(calls=42))
    assert lines(invoice) == [("subscription", "30/30", 0, 0)]
    assert (invoice["total_minor"], invoice["status"], invoice["paid_at"]) == (0, "paid", f"{YEAR}-12-01T00:00:00Z")
    assert invoice["usage"]["calls"] == 42


def test_pro_without_overage(service: AccountService, invoicer: Invoicer) -> None:
    invoice = close_one(invoicer, new_account(service, "pro", country="JP"))
    assert lines(invoice) == [("subscription", "30/30", 2900, 2900)]
    assert (invoice["subtotal_minor"], invoice["tax"]["amount_minor"], invoice["total_minor"]) == (2900, 0, 2900)
    assert (invoice["status"], invoice["issued_at"], invoice["due_at"]) == (
        "open", f"{YEAR}-12-01T00:00:00Z", f"{YEAR}-12-15T00:00:00Z")


def test_pro_with_overage_and_5250_calls(service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "pro", country="JP")
    service.set_overage(account, True)
    invoice = close_one(invoicer, account, AccountUsage(calls=5250, overage_by_plan={"pro": 250}))
    assert lines(invoice) == [("subscription", "30/30", 2900, 2900), ("overage", "250", 1, 250)]
    assert invoice["total_minor"] == 3150


def test_enterprise(service: AccountService, invoicer: Invoicer) -> None:
    invoice = close_one(invoicer, new_account(service, "enterprise", country="JP"), AccountUsage(calls=90_000))
    assert lines(invoice) == [("subscription", "30/30", 9900, 9900)] and invoice["total_minor"] == 9900


def test_upgrade_on_the_20th_bills_that_day_at_the_new_plan(service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "pro", country="JP")
    at(service, f"{YEAR}-11-20T15:00:00")
    service.set_plan(account, "enterprise")
    invoice = close_one(invoicer, account)
    # Pro 19/30 of 29.00 = 18.3667 -> 18.37; Enterprise 11/30 of 99.00 = 36.30
    assert lines(invoice) == [("subscription", "19/30", 2900, 1837), ("subscription", "11/30", 9900, 3630)]
    assert invoice["total_minor"] == 5467


def test_downgrade_requested_mid_month_bills_the_whole_month_then_free(
        service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "pro", country="JP")
    at(service, f"{YEAR}-11-12T10:00:00")
    service.set_plan(account, "free")
    at(service, f"{YEAR}-12-01T00:00:01")
    assert service.apply_scheduled_changes() == [account]
    assert lines(close_one(invoicer, account)) == [("subscription", "30/30", 2900, 2900)]
    invoicer.close_period(f"{YEAR}-12", {})
    [december] = invoicer.history(account)[:1]
    assert december["period"] == f"{YEAR}-12" and lines(december) == [("subscription", "31/31", 0, 0)]


def test_cancel_bills_the_month_and_moves_to_free(service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "enterprise", country="JP")
    at(service, f"{YEAR}-11-03T10:00:00")
    service.cancel(account)
    assert lines(close_one(invoicer, account)) == [("subscription", "30/30", 9900, 9900)]
    at(service, f"{YEAR}-12-01T00:00:00")
    service.apply_scheduled_changes()
    assert service.get_account(account)["subscription"]["plan"] == "free"


def test_account_created_on_the_10th_is_billed_from_its_first_day(
        service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "pro", when=f"{YEAR}-11-10T18:45:00", country="JP")
    # 21 of 30 days (10th..30th) of 29.00 = 20.30
    assert lines(close_one(invoicer, account)) == [("subscription", "21/30", 2900, 2030)]


def test_german_consumer_pays_19_percent(service: AccountService, invoicer: Invoicer) -> None:
    invoice = close_one(invoicer, new_account(service, "pro", country="DE"))
    assert invoice["tax"] == {"rate": "19", "jurisdiction": invoice["tax"]["jurisdiction"], "reverse_charge": False,
                              "note": None, "amount_minor": 551}
    assert "DE" in invoice["tax"]["jurisdiction"] and invoice["total_minor"] == 3451


def test_french_business_with_a_valid_vat_id_is_reverse_charged(service: AccountService,
                                                                invoicer: Invoicer) -> None:
    invoice = close_one(invoicer, new_account(service, "pro", country="FR", tax_id="FR40303265045"))
    assert invoice["tax"]["amount_minor"] == 0 and invoice["tax"]["reverse_charge"] is True
    assert "Article 196" in invoice["tax"]["note"] and invoice["total_minor"] == 2900


def test_chinese_account_in_cny(service: AccountService, invoicer: Invoicer) -> None:
    invoice = close_one(invoicer, new_account(service, "pro", country="CN", currency="CNY", language="zh"))
    # 199.00 CNY + 6% VAT 11.94
    assert invoice["currency"] == "CNY" and invoice["language"] == "zh"
    assert lines(invoice) == [("subscription", "30/30", 19900, 19900)]
    assert (invoice["tax"]["amount_minor"], invoice["total_minor"]) == (1194, 21094)


def test_a_sold_boost_has_its_own_line(service: AccountService, invoicer: Invoicer) -> None:
    account = new_account(service, "pro", country="JP")
    at(service, f"{YEAR}-11-05T12:00:00")
    service.add_boost(account, 500, service.clock() + 20 * 86400, price_minor=900)
    service.add_boost(account, 100, service.clock() + 86400)          # granted, not sold: no line
    invoice = close_one(invoicer, account)
    assert lines(invoice) == [("subscription", "30/30", 2900, 2900), ("boost", "1", 900, 900)]


def test_closing_twice_issues_one_invoice_per_account_with_gap_free_numbers(
        service: AccountService, invoicer: Invoicer, db: sessionmaker[Session]) -> None:
    accounts = [new_account(service, plan, country="JP") for plan in ("free", "pro", "enterprise", "pro")]
    first = invoicer.close_period(PERIOD, {})
    again = invoicer.close_period(PERIOD, {})
    assert len(first.issued) == 4 and again.issued == [] and again.existing == 4
    numbers = sorted(i["number"] for i in invoicer.for_period(PERIOD))
    assert numbers == [f"AH-{YEAR}-{n:06d}" for n in range(1, 5)]
    with db() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == len(accounts)


def test_invoice_states_move_only_forward(service: AccountService, invoicer: Invoicer) -> None:
    from billing.errors import Conflict
    invoice = close_one(invoicer, new_account(service, "pro", country="JP"))
    assert invoicer.set_status(invoice["number"], "uncollectible")["status"] == "uncollectible"
    paid = invoicer.set_status(invoice["number"], "paid", at=datetime(YEAR, 12, 20, tzinfo=UTC))
    assert (paid["status"], paid["paid_at"]) == ("paid", f"{YEAR}-12-20T00:00:00Z")
    with pytest.raises(Conflict):
        invoicer.set_status(invoice["number"], "void")
    free = close_one(invoicer, new_account(service, "free", country="JP"))
    with pytest.raises(Conflict):
        invoicer.set_status(free["number"], "open")                 # a $0 statement is paid at issue
