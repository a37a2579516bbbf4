"""Arrows point one way: the proxy's modules import neither the database nor ClickHouse code."""

from __future__ import annotations

import subprocess
import sys

from gateway.settings import ROOT

PROXY_MODULES = ("gateway.app", "gateway.proxy", "gateway.server", "gateway.quota.engine", "gateway.quota.reaper")
FORBIDDEN = ("sqlalchemy", "alembic", "psycopg", "billing", "billing_worker", "clickhouse_connect", "chdb")


def test_the_proxy_imports_no_database_or_clickhouse_code() -> None:
    probe = (f"import sys\nfor m in {PROXY_MODULES!r}: __import__(m)\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
