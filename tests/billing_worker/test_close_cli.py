"""`aihub close-period` end to end: usage rows in ClickHouse, accounts in the database, invoices out; then
`aihub invoice show | list | export`."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from billing.store import open_accounts
from billing_worker.clickhouse import ClickHouse
from billing_worker.drain import drain_once
from billing_worker.migrate import migrate
from billing_worker.settings import Settings
from gateway.cli import main
from tests.billing_worker.usage_factory import make_entry, write_entries
from tests.quota.conftest import PinnedClock


def test_close_period_issues_invoices_from_clickhouse_usage(
        redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    store = open_accounts(clock=PinnedClock("2026-09-20T10:00:00"))
    account = store.accounts.create_account("Heavy", "pro", country="JP", bank_transfer=True).account["id"]
    store.accounts.set_overage(account, True)
    store.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = [make_entry(i, acct=account, plan="pro", period="2026-10", overage="1" if i < 40 else "0",
                          model="gpt-4o-mini") for i in range(60)]
    write_entries(client, entries)
    with ClickHouse(settings.clickhouse_url) as ch:
        migrate(ch, settings.schema_dir)
        drain_once(client, ch, settings)
    client.close()

    assert main(["close-period", "2026-10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["issued"] == 1 and report["total_minor_by_currency"] == {"USD": 2900 + 40}
    [number] = report["numbers"]
    assert main(["close-period", "2026-10", "--json"]) == 0                     # again: nothing new
    assert json.loads(capsys.readouterr().out)["already_issued"] == 1

    assert main(["invoice", "show", number, "--json"]) == 0
    invoice = json.loads(capsys.readouterr().out)
    assert [(line["kind"], line["quantity"], line["amount_minor"]) for line in invoice["lines"]] == [
        ("subscription", "31/31", 2900), ("overage", "40", 40)]
    assert invoice["usage"]["calls"] == 60 and invoice["usage"]["by_model"][0]["model"] == "gpt-4o-mini"
    assert main(["invoice", "list", account, "--json"]) == 0
    assert [i["number"] for i in json.loads(capsys.readouterr().out)] == [number]
    assert main(["invoice", "export", "--period", "2026-10"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["number"], r["kind"], r["amount_minor"]) for r in rows] == [(number, "subscription", "2900"),
                                                                           (number, "overage", "40")]
    pdf = tmp_path / "invoice.pdf"
    assert main(["invoice", "pdf", number, "-o", str(pdf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pdf"] == str(pdf) and pdf.read_bytes().startswith(b"%PDF")
    # closed after the 1st (as when the worker was down): issued when the close ran, due 14 days after that
    issued, due = (datetime.fromisoformat(invoice[k].replace("Z", "+00:00")) for k in ("issued_at", "due_at"))
    assert issued >= datetime(2026, 11, 1, tzinfo=UTC) and due - issued == timedelta(days=14)
    assert main(["close-period", "2099-01"]) == 2
    assert "has not ended" in capsys.readouterr().err
    for bad in ("2026-1", "2026-13", "9999-12", "../x", "1969-12"):
        assert main(["close-period", bad]) == 2
        err = capsys.readouterr().err
        assert "YYYY-MM" in err and "Traceback" not in err
    assert main(["invoice", "pdf", number, "-o", "/nonexistent-dir-aihub/x.pdf"]) == 2
    assert main(["payment-method", "bank-transfer", account, "--json"]) == 0
    assert main(["invoice", "mark-paid", number, "--reference", "SEPA-123", "--json"]) == 0
    capsys.readouterr()
    assert main(["invoice", "refund", number, "--amount-minor", "40", "--reason", "overage waived", "--json"]) == 0
    refund = json.loads(capsys.readouterr().out)
    assert json.dumps(refund).count("CN-") >= 1
    assert main(["invoice", "refund", number, "--amount-minor", "99999"]) == 2            # more than was paid
    assert "refund" in capsys.readouterr().err.lower()
    assert main(["payments", account, "--json"]) == 0
    statement = json.loads(capsys.readouterr().out)
    [payment], [refunded], [note] = statement["payments"], statement["refunds"], statement["credit_notes"]
    assert (payment["provider"], payment["state"]) == ("bank_transfer", "partially_refunded")
    assert (refunded["amount_minor"], refunded["credit_note"], note["reason"]) == (40, note["number"],
                                                                                 "overage waived")
    assert main(["invoice", "set-status", number, "void"]) == 2                           # a paid invoice stays
    capsys.readouterr()
    assert main(["audit-log", "--json"]) == 0
    actions = [e["action"] for e in json.loads(capsys.readouterr().out)]
    assert "invoice.status" in actions
    assert main(["invoice", "show", "AH-1999-000001"]) == 2
