"""Revenue reports (billing.reports, docs/billing.md "Reports") over four pinned months with accounts upgrading,
downgrading, cancelling and being suspended; every figure below is computed by hand in the comments."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import Invoice
from billing.errors import InvalidInput
from billing.invoicing import Invoicer, Seller
from billing.pricing import AccountUsage
from billing.reports import MonthReport, months, percent, revenue_report
from billing.tax import load_tax_table
from gateway.catalog import Catalog
from gateway.settings import ROOT
from tests.quota.conftest import YEAR, PinnedClock

SELLER = Seller("AI Hub GmbH", "Example Str. 1, Berlin", "DE", "DE123456789")
BEFORE = f"{YEAR - 1}-12-10T08:00:00"


def at(service: AccountService, when: str) -> None:
    clock = service.clock
    assert isinstance(clock, PinnedClock)
    clock.set(when)


def create(service: AccountService, account_id: str, plan: str, when: str = BEFORE, **kw: Any) -> str:
    at(service, when)
    kw.setdefault("country", "JP")
    return str(service.create_account(f"Report {account_id}", plan, account_id=account_id, **kw).account["id"])


def epoch(when: str) -> float:
    return datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def history(service: AccountService, db: sessionmaker[Session], catalog: Catalog) -> list[MonthReport]:
    """January to April of YEAR (31, 29, 31, 30 days). Plans: free 0, pro 29.00 USD / 199.00 CNY, enterprise 99.00.

    Created on Dec 10 of the year before: A free, B free, C pro (DE), D enterprise, E pro, H free.
    Jan 05 F pro in CNY (CN). Jan 15 G free, Jan 25 G -> pro (a new account: not in January's free cohort).
    Jan 20 D asks for pro (downgrade, applied Feb 1 00:00). Feb 10 A -> pro. Feb 12 A buys a boost for 5.00.
    Feb 15 C cancels (free from Mar 1 00:00). Mar 05 H -> enterprise. Mar 10 E suspended.
    """
    for account in ("aaaa", "bbbb", "hhhh"):
        create(service, account, "free")
    create(service, "cccc", "pro", country="DE")
    create(service, "dddd", "enterprise")
    create(service, "eeee", "pro")
    service.set_overage("eeee", True)
    create(service, "ffff", "pro", f"{YEAR}-01-05T09:00:00", country="CN", currency="CNY", language="zh")
    create(service, "gggg", "free", f"{YEAR}-01-15T09:00:00")
    at(service, f"{YEAR}-01-20T10:00:00")
    service.set_plan("dddd", "pro")                          # scheduled for Feb 1
    at(service, f"{YEAR}-01-25T10:00:00")
    service.set_plan("gggg", "pro")
    at(service, f"{YEAR}-02-01T00:00:01")
    assert service.apply_scheduled_changes() == ["dddd"]
    at(service, f"{YEAR}-02-10T10:00:00")
    service.set_plan("aaaa", "pro")
    at(service, f"{YEAR}-02-12T10:00:00")
    service.add_boost("aaaa", 1000, epoch(f"{YEAR}-02-28T00:00:00"), price_minor=500)
    at(service, f"{YEAR}-02-15T10:00:00")
    service.cancel("cccc")                                   # scheduled for Mar 1
    at(service, f"{YEAR}-03-01T00:00:01")
    assert service.apply_scheduled_changes() == ["cccc"]
    at(service, f"{YEAR}-03-05T10:00:00")
    service.set_plan("hhhh", "enterprise")
    at(service, f"{YEAR}-03-10T10:00:00")
    service.set_status("eeee", "suspended")

    invoicer = Invoicer(db, catalog, load_tax_table(ROOT / "config" / "tax.toml"), SELLER, net_days=14)
    invoicer.close_period(f"{YEAR}-01", {"eeee": AccountUsage(calls=5300, overage_by_plan={"pro": 300})})
    invoicer.close_period(f"{YEAR}-02", {})
    with db.begin() as session:                              # C pays January, D's January invoice is voided
        session.execute(update(Invoice).where(Invoice.account_id == "cccc", Invoice.period == f"{YEAR}-01")
                        .values(status="paid"))
        session.execute(update(Invoice).where(Invoice.account_id == "dddd", Invoice.period == f"{YEAR}-01")
                        .values(status="void"))
    return revenue_report(db, catalog, f"{YEAR}-01", f"{YEAR}-04")


def test_mrr_arr_and_growth_per_currency(history: list[MonthReport]) -> None:
    assert [m.period for m in history] == [f"{YEAR}-{m:02d}" for m in (1, 2, 3, 4)]
    usd = [m.currencies["USD"] for m in history]
    cny = [m.currencies["CNY"] for m in history]
    # Dec end: C 2900 + D 9900 + E 2900 = 15700.
    # Jan end: + G 2900 (D's downgrade takes effect Feb 1) = 18600; growth 2900/15700 = 18.47 %.
    # Feb end: A 2900 + C 2900 + D 2900 + E 2900 + G 2900 = 14500; growth -4100/18600 = -22.04 %.
    # Mar end: A 2900 + D 2900 + G 2900 + H 9900 = 18600 (C free, E suspended); growth 4100/14500 = 28.28 %.
    # Apr: unchanged, 0.00 %.
    assert [f.mrr_previous_minor for f in usd] == [15700, 18600, 14500, 18600]
    assert [f.mrr_minor for f in usd] == [18600, 14500, 18600, 18600]
    assert [f.arr_minor for f in usd] == [223200, 174000, 223200, 223200]
    assert [f.mrr_growth_pct for f in usd] == ["18.47", "-22.04", "28.28", "0.00"]
    assert [f.paying_accounts for f in usd] == [4, 5, 4, 4]
    # CNY: F from Jan 5; nothing before, so no growth rate in January.
    assert [(f.mrr_minor, f.arr_minor, f.mrr_growth_pct) for f in cny] == [
        (19900, 238800, None), (19900, 238800, "0.00"), (19900, 238800, "0.00"), (19900, 238800, "0.00")]


def test_conversion_and_churn(history: list[MonthReport]) -> None:
    counts = [m.accounts for m in history]
    # Jan: free at start A B H, nobody converts (G was created in January); paying at start C D E, all stay.
    assert (counts[0].free_at_start, counts[0].converted, counts[0].conversion_pct) == (3, 0, "0.00")
    assert (counts[0].paying_at_start, counts[0].churned, counts[0].churn_pct) == (3, 0, "0.00")
    assert (counts[0].paying_at_end, counts[0].free_at_end) == (5, 3)          # C D E F G; A B H
    # Feb: A converts of A B H (33.33 %); C D E F G paying at start, all still paying at the end (C's cancel is
    # for Mar 1, D downgraded but still pays).
    assert (counts[1].free_at_start, counts[1].converted, counts[1].conversion_pct) == (3, 1, "33.33")
    assert (counts[1].paying_at_start, counts[1].churned, counts[1].churn_pct) == (5, 0, "0.00")
    # Mar: H converts of B H (50 %); of A C D E F G paying at start, C (free) and E (suspended) churn: 2/6.
    assert (counts[2].free_at_start, counts[2].converted, counts[2].conversion_pct) == (2, 1, "50.00")
    assert (counts[2].paying_at_start, counts[2].churned, counts[2].churn_pct) == (6, 2, "33.33")
    assert (counts[2].paying_at_end, counts[2].free_at_end) == (5, 2)          # A D F G H; B C
    assert (counts[3].free_at_start, counts[3].converted, counts[3].churned) == (2, 0, 0)


def test_invoiced_revenue_tax_and_states(history: list[MonthReport]) -> None:
    jan, feb = history[0].currencies["USD"], history[1].currencies["USD"]
    # January, USD: A B H 0 (paid at once); C 2900 + 19 % 551 = 3451 (paid); D 9900 (void); E 2900 + 300 overage;
    # G free 10/31 then pro 7/31: 2900 x 7 / 31 = 654.8 -> 655 (open). Void D is left out of the revenue.
    assert (jan.subscription_minor, jan.overage_minor, jan.boost_minor) == (2900 + 2900 + 655, 300, 0)
    assert (jan.subtotal_minor, jan.tax_minor, jan.total_minor, jan.invoices) == (6755, 551, 7306, 6)
    assert jan.tax_collected_minor == 551
    assert jan.by_status == {"paid": {"invoices": 4, "total_minor": 3451},
                             "open": {"invoices": 2, "total_minor": 3200 + 655},
                             "void": {"invoices": 1, "total_minor": 9900},
                             "uncollectible": {"invoices": 0, "total_minor": 0},
                             "draft": {"invoices": 0, "total_minor": 0}}
    # January, CNY: F created on the 5th, 27/31 of 199.00 = 173.32; China 6 % = 10.3992 -> 10.40.
    cny = history[0].currencies["CNY"]
    assert (cny.subscription_minor, cny.tax_minor, cny.total_minor, cny.tax_collected_minor) == (
        17332, 1040, 18372, 0)
    assert cny.by_status["open"] == {"invoices": 1, "total_minor": 18372}
    # February: A free 9/29 then pro 20/29 = 2000; C D E G pro 2900 each; A's boost 500; C taxed 551.
    assert (feb.subscription_minor, feb.overage_minor, feb.boost_minor) == (2000 + 4 * 2900, 0, 500)
    assert (feb.tax_minor, feb.total_minor, feb.tax_collected_minor) == (551, 2000 + 4 * 2900 + 500 + 551, 0)
    assert history[2].currencies["USD"].invoices == 0                          # March is not closed


def test_helpers_and_bad_ranges() -> None:
    assert percent(1, 3) == "33.33" and percent(2, 3) == "66.67" and percent(1, 0) is None
    assert percent(-4100, 18600) == "-22.04"
    assert [p.name for p in months("2026-11", "2027-02")] == ["2026-11", "2026-12", "2027-01", "2027-02"]
    with pytest.raises(InvalidInput):
        months("2026-11", "2026-10")
    with pytest.raises(InvalidInput):
        months("2026-13", "2027-01")


def test_cli_report_revenue(redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from billing.store import open_accounts
    from gateway.cli import main
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    store = open_accounts(clock=PinnedClock("2026-09-20T10:00:00"))
    store.accounts.create_account("Paying", "pro", country="JP", account_id="paying1", bank_transfer=True)
    store.accounts.create_account("Free", "free", country="JP", account_id="free1")
    store.close()
    assert main(["report", "revenue", "--from", "2026-09", "--to", "2026-10", "--json"]) == 0
    sep, octo = json.loads(capsys.readouterr().out)
    assert (sep["period"], sep["currencies"]["USD"]["mrr_minor"], sep["currencies"]["USD"]["mrr_growth_pct"]) == (
        "2026-09", 2900, None)
    assert (octo["currencies"]["USD"]["arr_minor"], octo["currencies"]["USD"]["mrr_growth_pct"]) == (34800, "0.00")
    assert octo["accounts"]["free_at_start"] == 1 and octo["accounts"]["paying_at_start"] == 1
    assert main(["report", "revenue", "--from", "2026-09", "--to", "2026-10"]) == 0
    assert "mrr_minor: 2900" in capsys.readouterr().out
    assert main(["report", "revenue", "--from", "2026-11", "--to", "2026-10"]) == 2
    assert "after" in capsys.readouterr().err
