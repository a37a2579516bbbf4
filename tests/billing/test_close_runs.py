"""The close's guarantees under concurrency and crashes: two processes closing at once, and a close killed with
SIGKILL half-way then run again, leave exactly one invoice per account, the same lines, numbers without gaps."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from billing.accounts import AccountService
from billing.db.models import Invoice
from tests.billing.test_invoices import PERIOD, SELLER, YEAR, at

ACCOUNTS = 30


def _close(url: str, slow_s: float = 0.0, batch: int = 500) -> None:
    from billing.db.engine import make_engine, sessions
    from billing.invoicing import Invoicer
    from billing.tax import load_tax_table
    from gateway.catalog import load_catalog
    from gateway.settings import ROOT
    engine = make_engine(url)
    invoicer = Invoicer(sessions(engine), load_catalog(ROOT / "config" / "catalog.toml"),
                        load_tax_table(ROOT / "config" / "tax.toml"), SELLER)
    invoicer.close_period(PERIOD, {}, progress=(lambda done, total: time.sleep(slow_s)) if slow_s else None,
                          batch=batch)
    engine.dispose()


def seed(service: AccountService) -> list[str]:
    at(service, f"{YEAR}-10-20T10:00:00")
    plans = ("free", "pro", "enterprise")
    return [str(service.create_account(f"Tenant {i}", plans[i % 3], country=("DE", "FR", "US")[i % 3])
                .account["id"]) for i in range(ACCOUNTS)]


def invoices(db: sessionmaker[Session]) -> list[tuple[str, str, int]]:
    with db() as session:
        return sorted((i.number, i.account_id, i.total_minor) for i in session.scalars(select(Invoice)))


def check(db: sessionmaker[Session], accounts: list[str]) -> list[tuple[str, str, int]]:
    found = invoices(db)
    assert sorted(a for _, a, _ in found) == sorted(accounts)                 # one per account
    assert [n for n, _, _ in found] == [f"AH-{YEAR}-{k:06d}" for k in range(1, len(accounts) + 1)]   # no gaps
    with db() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == len(accounts)
    return found


def test_two_processes_closing_at_once(service: AccountService, db: sessionmaker[Session],
                                       database_url: str) -> None:
    accounts = seed(service)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_close, args=(database_url, 0.01, 4)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    found = check(db, accounts)
    # free in DE: 0; pro in FR (a consumer): 29.00 + 20% = 34.80; enterprise in US (no state tax): 99.00
    assert {total for _, _, total in found} == {0, 3480, 9900}


def test_a_close_killed_half_way_and_run_again(service: AccountService, db: sessionmaker[Session],
                                               database_url: str) -> None:
    accounts = seed(service)
    context = multiprocessing.get_context("spawn")
    proc = context.Process(target=_close, args=(database_url, 0.05, 3))
    proc.start()
    deadline = time.monotonic() + 60
    while len(invoices(db)) < 5:
        assert time.monotonic() < deadline and proc.is_alive()
        time.sleep(0.02)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    half = invoices(db)
    assert 5 <= len(half) < ACCOUNTS
    _close(database_url)
    found = check(db, accounts)
    assert found[:len(half)] == half                         # what was issued stays as it was


def test_a_re_run_gives_identical_lines(service: AccountService, db: sessionmaker[Session],
                                        database_url: str) -> None:
    seed(service)
    _close(database_url)
    before = invoices(db)
    _close(database_url)
    assert invoices(db) == before
