"""Monthly close benchmark (excluded from the default run): `pytest benchmarks/test_bench_close.py -m benchmark -s`.

10,000 accounts in the system of record (SQLite file) and 1M usage rows in embedded chDB for 2026-11; the close
reads the usage (FINAL) and issues one invoice per account. Target: under 15 s on this machine. Prints the time of
each phase and the process's peak RSS.
"""

from __future__ import annotations

import os
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate as migrate_db
from billing.db.models import Account, PlanChange, Subscription
from billing.invoicing import Invoicer, Seller
from billing.tax import load_tax_table
from billing_worker.clickhouse import ClickHouse
from billing_worker.invoice_usage import period_usage
from billing_worker.migrate import migrate
from billing_worker.settings import REPO_ROOT
from gateway.catalog import load_catalog

ACCOUNTS = int(os.environ.get("BENCH_CLOSE_ACCOUNTS", "10000"))
ROWS = int(os.environ.get("BENCH_CLOSE_ROWS", "1000000"))
GENERATE = """
INSERT INTO usage_rows (rid, acct, key_id, plan, model, upstream, period, outcome, ts_start_ms, ts_end_ms, status,
                        calls, overage, pt, ct, cached, reasoning, cost_nanos, latency_ms, stream_id)
SELECT concat('req_', toString(number)), concat('acct', toString(number % {accounts:UInt32})), 'k0',
       ['free', 'pro', 'enterprise'][number % {accounts:UInt32} % 3 + 1],
       ['gpt-4o-mini', 'gpt-4o', 'o3-mini'][number % 3 + 1], 'default', '2026-11', 'ok',
       1793491200000 + (number % 2592000) * 1000, 1793491200250 + (number % 2592000) * 1000, 200,
       1, if(number % 50 = 0, 1, 0), 100 + number % 900, 20 + number % 300, number % 64, 0,
       1000000 + (number % 5000) * 17, 200 + number % 800, concat(toString(number), '-0')
FROM numbers({count:UInt64})
"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.benchmark
def test_close_10k_accounts_over_1m_rows(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bench.db'}")
    migrate_db(engine)
    created = datetime(2026, 10, 1, tzinfo=UTC)
    plans = ("free", "pro", "enterprise")
    countries = ("DE", "FR", "US", "CN", "JP")
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(Account), [
            {"id": f"acct{i}", "name": f"Account {i}", "billing_email": None, "country": countries[i % 5],
             "region": "", "tax_id": None, "currency": "USD", "language": "en", "status": "active", "version": 1,
             "created_at": created} for i in range(ACCOUNTS)])
        conn.execute(insert(Subscription), [
            {"account_id": f"acct{i}", "plan": plans[i % 3], "since": created, "custom_quota": None,
             "overage_enabled": i % 3 == 1, "scheduled_plan": None, "scheduled_at": None} for i in range(ACCOUNTS)])
        conn.execute(insert(PlanChange), [
            {"account_id": f"acct{i}", "from_plan": None, "to_plan": plans[i % 3], "at": created, "actor": "bench"}
            for i in range(ACCOUNTS)])
    seed_db_s = time.perf_counter() - started
    with ClickHouse(f"chdb://{tmp_path / 'chdb'}") as ch:
        migrate(ch, REPO_ROOT / "clickhouse")
        started = time.perf_counter()
        ch.command(GENERATE, {"accounts": ACCOUNTS, "count": ROWS})
        seed_ch_s = time.perf_counter() - started

        started = time.perf_counter()
        usage = period_usage(ch, "2026-11")
        usage_s = time.perf_counter() - started
    invoicer = Invoicer(sessions(engine), load_catalog(REPO_ROOT / "config" / "catalog.toml"),
                        load_tax_table(REPO_ROOT / "config" / "tax.toml"), Seller("AI Hub", "", "DE", ""))
    started = time.perf_counter()
    report = invoicer.close_period("2026-11", usage)
    close_s = time.perf_counter() - started
    assert len(report.issued) == ACCOUNTS and sum(u.calls for u in usage.values()) == ROWS
    total = usage_s + close_s
    print(f"\n[close] {ACCOUNTS:,} accounts, {ROWS:,} usage rows (seeded: db {seed_db_s:.1f}s, chDB {seed_ch_s:.1f}s)")
    print(f"[close] usage query (FINAL) {usage_s:.2f}s + invoices {close_s:.2f}s = {total:.2f}s "
          f"({ACCOUNTS / close_s:,.0f} invoices/s); target 15 s: {'met' if total < 15 else 'NOT met'}; "
          f"peak RSS {peak_rss_mb():,.0f} MB")
