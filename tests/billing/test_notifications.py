"""Notifications end to end: every kind recorded once and delivered once to a real SMTP server (aiosmtpd) and to a
real HTTP webhook receiver that verifies the signature; a failing receiver gets retries with backoff."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing import notifications
from billing.accounts import AccountService
from billing.db.models import Delivery, Invoice
from billing.errors import InvalidInput, NotFound
from billing.invoicing import Invoicer
from billing.notifications import deliver_due, history, produce_invoice_notifications, record_anomalies, sign
from billing.notifications_settings import SmtpSettings
from billing.tax import load_tax_table
from billing_worker.anomalies import Anomaly
from billing_worker.notify import NotificationScheduler, consume_quota_warnings
from gateway.catalog import Catalog
from gateway.keys import AccountKeys
from gateway.redis_server import free_port
from gateway.settings import ROOT
from tests.billing.test_invoices import PERIOD, SELLER, YEAR, at

ALL_KINDS = {"quota_80", "quota_100", "invoice_issued", "invoice_due_soon", "invoice_overdue", "usage_anomaly"}


# -- a real SMTP server and a real webhook receiver --------------------------------------------------------------

class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"



@pytest.fixture(autouse=True)
def _local_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receivers here listen on 127.0.0.1, which production refuses (billing.webhook_urls)."""
    monkeypatch.setenv("AIHUB_WEBHOOK_ALLOW_PRIVATE", "1")

@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSettings, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield SmtpSettings(host="127.0.0.1", port=controller.port, sender="billing@aihub.example"), inbox
    controller.stop()


class Receiver:
    """A webhook endpoint: verifies X-AIHub-Signature with the account's secret, answers from `statuses`."""

    def __init__(self) -> None:
        self.secret = ""
        self.statuses: list[int] = []      # answers to give first; then 200
        self.received: list[dict[str, Any]] = []      # verified bodies
        self.requests = 0
        self.rejected = 0
        self.clock = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                ok = notifications.verify_signature(receiver.secret, self.headers["X-AIHub-Signature"], body,
                                                    now=receiver.clock)
                ok = ok and self.headers["X-AIHub-Timestamp"] == self.headers["X-AIHub-Signature"][2:12]
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if not ok:
                    receiver.rejected += 1
                    status = 401
                elif status == 200:
                    receiver.received.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/aihub"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def moment(when: str) -> datetime:
    return datetime.fromisoformat(when).replace(tzinfo=UTC)


def deliver(db: sessionmaker[Session], smtp: SmtpSettings, receiver: Receiver, when: datetime) -> Any:
    receiver.clock = when.timestamp()
    return deliver_due(db, smtp, None, when)


def deliveries(db: sessionmaker[Session]) -> list[tuple[str, str, str, int]]:
    with db() as session:
        rows = session.execute(select(Delivery.channel, Delivery.state, Delivery.attempts, Delivery.notification_id))
        return sorted((c, s, str(n), a) for c, s, a, n in rows)


# -- tests ---------------------------------------------------------------------------------------------------------

def test_each_kind_is_delivered_once_by_email_and_webhook(
        service: AccountService, db: sessionmaker[Session], r: redis.Redis, catalog: Catalog,
        smtp: tuple[SmtpSettings, Inbox], receiver: Receiver) -> None:
    settings, inbox = smtp
    at(service, f"{YEAR}-10-15T08:00:00")
    acct = str(service.create_account("Acme", "pro", country="US", billing_email="ops@acme.example")
               .account["id"])
    receiver.secret = str(service.set_webhook(acct, receiver.url))
    assert receiver.secret.startswith("whsec_")
    assert service.notification_settings(acct) == {"email": "ops@acme.example", "webhook_url": receiver.url,
                                                   "warning_levels": [80, 100]}

    # quota warnings, as settle.lua writes them (twice: a re-read must not notify twice)
    stream = AccountKeys(acct, 16).notify
    t0 = moment(f"{YEAR}-11-20T10:00:00")
    for level, used in ((80, 800), (100, 1000), (80, 800)):
        r.xadd(stream, {"acct": acct, "period": PERIOD, "level": level, "used": used, "limit": 1000,
                        "ts_ms": int(t0.timestamp() * 1000)})
    assert consume_quota_warnings(r, 16, db, t0) == 2
    assert consume_quota_warnings(r, 16, db, t0) == 0
    assert r.xpending(stream, "notifications")["pending"] == 0          # acknowledged

    # an anomalous day (twice: recorded once)
    anomaly = Anomaly(acct, date(YEAR, 11, 19), 900, 100.0, 9.0)
    assert record_anomalies(db, [anomaly], t0) == 1
    assert record_anomalies(db, [anomaly], t0) == 0

    # the close issues an open invoice on Dec 1st, due 14 days later
    Invoicer(db, catalog, load_tax_table(ROOT / "config" / "tax.toml"), SELLER, net_days=14).close_period(PERIOD, {})
    with db() as session:
        [invoice] = session.scalars(select(Invoice))
        number = invoice.number
    issued = moment(f"{YEAR}-12-01T01:00:00")
    assert produce_invoice_notifications(db, issued) == {"invoice_issued": 1, "invoice_due_soon": 0,
                                                         "invoice_overdue": 0}
    due_soon = moment(f"{YEAR}-12-13T09:00:00")
    assert produce_invoice_notifications(db, due_soon)["invoice_due_soon"] == 1
    overdue = moment(f"{YEAR}-12-16T09:00:00")
    assert produce_invoice_notifications(db, overdue) == {"invoice_issued": 0, "invoice_due_soon": 0,
                                                          "invoice_overdue": 1}
    assert produce_invoice_notifications(db, overdue + timedelta(days=1)) == {
        "invoice_issued": 0, "invoice_due_soon": 0, "invoice_overdue": 0}

    report = deliver(db, settings, receiver, overdue)
    assert report.as_dict() == {"delivered": 12, "failed": 0, "gave_up": 0}, report.errors
    assert deliver(db, settings, receiver, overdue + timedelta(days=2)).as_dict() == {
        "delivered": 0, "failed": 0, "gave_up": 0}

    assert receiver.rejected == 0 and receiver.requests == 6
    assert sorted(b["type"] for b in receiver.received) == sorted(ALL_KINDS)
    assert {b["account"] for b in receiver.received} == {acct}
    bodies = {b["type"]: b for b in receiver.received}
    assert bodies["invoice_overdue"]["data"]["number"] == number
    assert bodies["quota_80"]["data"] == {"period": PERIOD, "level": 80, "used": 800, "limit": 1000,
                                          "at": f"{YEAR}-11-20T10:00:00Z"}
    assert len(inbox.messages) == 6 and {m["To"] for m in inbox.messages} == {"ops@acme.example"}
    subjects = sorted(str(m["Subject"]) for m in inbox.messages)
    assert f"[AI Hub] Invoice {number} is overdue" in subjects
    assert f"[AI Hub] You have used 80% of your monthly calls ({PERIOD})" in subjects
    overdue_mail = next(m for m in inbox.messages if "overdue" in str(m["Subject"]))
    assert "USD 29.00" in overdue_mail.get_content()

    assert {(c, s, a) for c, s, _, a in deliveries(db)} == {("email", "delivered", 1), ("webhook", "delivered", 1)}
    shown = history(db, acct)
    assert {n["kind"] for n in shown} == ALL_KINDS
    assert all([d["state"] for d in n["deliveries"]] == ["delivered", "delivered"] for n in shown)


def test_a_failing_webhook_is_retried_with_backoff_until_delivered(
        service: AccountService, db: sessionmaker[Session], smtp: tuple[SmtpSettings, Inbox],
        receiver: Receiver) -> None:
    settings, inbox = smtp
    acct = str(service.create_account("NoMail", "pro").account["id"])
    receiver.secret = str(service.set_webhook(acct, receiver.url))
    receiver.statuses = [500, 500]
    t0 = moment(f"{YEAR}-11-20T10:00:00")
    record_anomalies(db, [Anomaly(acct, date(YEAR, 11, 19), 900, 100.0, 9.0)], t0)

    assert deliver(db, settings, receiver, t0).as_dict() == {"delivered": 0, "failed": 1, "gave_up": 0}
    with db() as session:
        [delivery] = session.scalars(select(Delivery))
        assert (delivery.state, delivery.attempts, delivery.last_error) == ("failed", 1, "HTTP 500")
    assert deliver(db, settings, receiver, t0 + timedelta(seconds=59)).as_dict()["failed"] == 0   # backoff: 1 min
    t1 = t0 + timedelta(seconds=61)
    assert deliver(db, settings, receiver, t1).as_dict() == {"delivered": 0, "failed": 1, "gave_up": 0}
    assert deliver(db, settings, receiver, t1 + timedelta(seconds=299)).as_dict()["failed"] == 0   # then 5 min
    t2 = t1 + timedelta(seconds=301)
    assert deliver(db, settings, receiver, t2).as_dict() == {"delivered": 1, "failed": 0, "gave_up": 0}
    assert deliver(db, settings, receiver, t2 + timedelta(days=1)).as_dict()["delivered"] == 0
    with db() as session:
        [delivery] = session.scalars(select(Delivery))
        assert (delivery.state, delivery.attempts, delivery.last_error) == ("delivered", 3, None)
    assert receiver.requests == 3 and len(receiver.received) == 1 and receiver.rejected == 0
    assert inbox.messages == []                       # no billing email: no email delivery


def test_an_unreachable_webhook_gives_up_after_the_last_backoff(
        service: AccountService, db: sessionmaker[Session]) -> None:
    acct = str(service.create_account("Gone", "pro").account["id"])
    from gateway.redis_server import free_port as port
    service.set_webhook(acct, f"http://127.0.0.1:{port()}/nobody-listens")
    now = moment(f"{YEAR}-11-20T10:00:00")
    record_anomalies(db, [Anomaly(acct, date(YEAR, 11, 19), 900, 100.0, 9.0)], now)
    states = []
    for _ in range(6):
        report = deliver_due(db, None, None, now)
        states.append(report.as_dict())
        now += timedelta(hours=13)
    assert [s["failed"] for s in states] == [1, 1, 1, 1, 1, 0] and states[-1]["gave_up"] == 1
    with db() as session:
        [delivery] = session.scalars(select(Delivery))
        assert delivery.state == "gave_up" and delivery.attempts == 6
        assert delivery.last_error and "Connection refused" in delivery.last_error
    assert deliver_due(db, None, None, now + timedelta(days=30)).as_dict()["gave_up"] == 0


def test_signatures(service: AccountService) -> None:
    secret, body, ts = "whsec_" + "ab" * 32, b'{"id":1,"type":"quota_80"}', 1_790_000_000
    header = sign(secret, ts, body)
    assert notifications.verify_signature(secret, header, body, now=ts + 10)
    assert notifications.verify_signature(secret, header, body.decode(), now=ts - 10)
    assert not notifications.verify_signature("whsec_other", header, body, now=ts)                 # forged
    assert not notifications.verify_signature(secret, header, body + b" ", now=ts)                 # body changed
    assert not notifications.verify_signature(secret, header.replace(f"t={ts}", f"t={ts + 1}"), body, now=ts)
    assert not notifications.verify_signature(secret, header, body, now=ts + 301)                  # too old: replay
    assert not notifications.verify_signature(secret, "v1=" + header.split("v1=")[1], body, now=ts)   # no t=
    assert not notifications.verify_signature(secret, "garbage", body, now=ts)
    assert notifications.verify_signature(secret, f"t={ts},v1={'0' * 64},{header.split(',')[1]}", body, now=ts)


def test_chinese_email_and_settings(service: AccountService, db: sessionmaker[Session],
                                    smtp: tuple[SmtpSettings, Inbox], r: redis.Redis) -> None:
    settings, inbox = smtp
    acct = str(service.create_account("北京客户", "pro", country="CN", currency="CNY", language="zh",
                                      billing_email="cw@example.cn").account["id"])
    assert service.set_warning_levels(acct, [100]) == [100]
    with pytest.raises(InvalidInput):
        service.set_warning_levels(acct, [50])
    with pytest.raises(InvalidInput):
        service.set_webhook(acct, "ftp://example.com/x")
    with pytest.raises(NotFound):
        service.set_webhook("nosuchacct", "https://example.com/x")
    stream = AccountKeys(acct, 16).notify
    now = moment(f"{YEAR}-11-20T10:00:00")
    for level in (80, 100):
        r.xadd(stream, {"acct": acct, "period": PERIOD, "level": level, "used": level, "limit": 100,
                        "ts_ms": int(now.timestamp() * 1000)})
    assert consume_quota_warnings(r, 16, db, now) == 1          # 80 % is turned off
    assert deliver_due(db, settings, None, now).as_dict()["delivered"] == 1
    [message] = inbox.messages
    assert str(message["Subject"]) == f"[AI Hub] 您已用完本月调用额度（{PERIOD}）"
    assert "北京客户" in message.get_content() and "100 / 100" in message.get_content()
    assert service.set_webhook(acct, None) is None
    assert service.notification_settings(acct)["webhook_url"] is None


def test_a_webhook_turned_off_gives_up_its_pending_deliveries(
        service: AccountService, db: sessionmaker[Session], receiver: Receiver) -> None:
    acct = str(service.create_account("Fickle", "pro").account["id"])
    service.set_webhook(acct, receiver.url)
    now = moment(f"{YEAR}-11-20T10:00:00")
    record_anomalies(db, [Anomaly(acct, date(YEAR, 11, 19), 900, 100.0, 9.0)], now)
    service.set_webhook(acct, None)
    assert deliver_due(db, None, None, now).as_dict() == {"delivered": 0, "failed": 0, "gave_up": 1}
    assert receiver.requests == 0


def test_the_scheduler_produces_and_delivers(
        service: AccountService, db: sessionmaker[Session], r: redis.Redis, smtp: tuple[SmtpSettings, Inbox],
        receiver: Receiver) -> None:
    settings, inbox = smtp
    acct = str(service.create_account("Sched", "pro", billing_email="a@sched.example").account["id"])
    receiver.secret = str(service.set_webhook(acct, receiver.url))
    now = moment(f"{YEAR}-11-20T10:00:00")
    receiver.clock = now.timestamp()
    r.xadd(AccountKeys(acct, 16).notify, {"acct": acct, "period": PERIOD, "level": 80, "used": 8, "limit": 10,
                                          "ts_ms": int(now.timestamp() * 1000)})

    class FakeStore:      # what billing.store.open_accounts returns, on the test's database and Redis
        redis = r
        projector = type("P", (), {"shards": 16})()
        accounts = service

        def close(self) -> None:
            pass

    scheduler = NotificationScheduler(opener=FakeStore, clickhouse=None, smtp=settings, clock=lambda: now)
    result = scheduler.tick()
    assert result is not None and result["quota"] == 1 and result["delivered"]["delivered"] == 2
    assert len(inbox.messages) == 1 and [b["type"] for b in receiver.received] == ["quota_80"]
    assert scheduler.tick() == {"quota": 0, "invoices": {"invoice_issued": 0, "invoice_due_soon": 0,
                                                         "invoice_overdue": 0},
                                "delivered": {"delivered": 0, "failed": 0, "gave_up": 0}}


def test_the_scheduler_warns_once_when_the_database_cannot_be_opened(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Any:
        raise OSError("no database")

    scheduler = NotificationScheduler(opener=broken, clickhouse=None, smtp=SmtpSettings("127.0.0.1", 25, "a@b.c"))
    assert scheduler.tick() is None and scheduler.tick() is None
    assert sum("cannot be opened" in rec.message for rec in caplog.records) == 1


def test_cli_set_webhook_and_history(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], receiver: Receiver) -> None:
    from billing.store import open_accounts
    from gateway.cli import main
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["create-account", "--name", "Cli", "--plan", "pro", "--email", "cli@example.com", "--id",
                 "cliacct", "--bank-transfer", "--json"]) == 0
    capsys.readouterr()
    assert main(["set-webhook", "cliacct", receiver.url, "--json"]) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["webhook_url"] == receiver.url and shown["signing_secret"].startswith("whsec_")
    assert "shown once" in captured.err
    receiver.secret = shown["signing_secret"]
    assert main(["set-webhook", "cliacct", receiver.url, "--off"]) == 2            # both: refused
    assert main(["set-webhook", "cliacct", "not a url"]) == 2
    assert main(["set-webhook", "nobody", receiver.url]) == 2
    capsys.readouterr()

    store = open_accounts()
    now = datetime.now(UTC)
    receiver.clock = now.timestamp()
    record_anomalies(store.accounts.sessions, [Anomaly("cliacct", now.date(), 900, 100.0, 9.0)], now)
    deliver_due(store.accounts.sessions, None, None, now)       # the webhook now; email waits (no SMTP)
    store.close()
    assert main(["notifications", "cliacct", "--json"]) == 0
    [note] = json.loads(capsys.readouterr().out)
    assert note["kind"] == "usage_anomaly" and note["dedup_key"] == f"usage_anomaly:{now.date().isoformat()}"
    assert {d["channel"]: d["state"] for d in note["deliveries"]} == {"email": "pending", "webhook": "delivered"}
    assert main(["notifications", "cliacct"]) == 0
    assert "usage_anomaly" in capsys.readouterr().out
    assert main(["set-webhook", "cliacct", "--off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"account": "cliacct", "webhook_url": None}
    assert main(["notifications", "nobody"]) == 2
