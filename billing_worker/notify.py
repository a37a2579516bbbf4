"""The worker's notification producers and the scheduler that runs them, then delivers (billing.notifications).

- **Quota warnings**: settle.lua XADDs `{acct, period, level, used, limit, ts_ms}` to `{s:NN}:notify` when an
  account reaches 80 % / 100 % of its limit. The consumer group `notifications` (created from the first entry,
  like the drain's) is read on every shard stream: first this consumer's own pending entries (a crash between
  reading and acknowledging), then new ones. Each entry is recorded as quota_80 / quota_100 (dedup
  "quota_<level>:<period>" per account) and acknowledged after the commit, so a crash re-reads, never loses, and
  the unique key makes the re-read a no-op.
- **Invoices**: issued, due in 3 days, overdue: billing.notifications.produce_invoice_notifications (a scan).
- **Anomalies**: billing_worker.anomalies over the current month (and the previous one in its first days), the
  last two days' flags recorded as usage_anomaly (dedup per account and day); every ANOMALY_INTERVAL_S.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from billing.notifications import (
    UrllibPoster,
    deliver_due,
    produce_invoice_notifications,
    record_anomalies,
    record_quota_warning,
)
from billing.notifications_settings import SmtpSettings
from billing_worker.redis_streams import Client, call_on, ensure_groups, read_new, read_own_pending
from billing_worker.store_thread import StoreThread
from gateway.keys import ID_RE, notify_stream
from gateway.redis_client import text

log = logging.getLogger(__name__)

GROUP = "notifications"
CONSUMER = "notifier"          # one name: a restarted worker re-reads what its predecessor left pending
READ_LIMIT = 1000
INTERVAL_S = 30.0
ANOMALY_INTERVAL_S = 600.0
ANOMALY_RECENT_DAYS = 2


def _fields(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return {text(k): text(v) for k, v in flat.items()}
    it = iter(flat or [])
    return {text(k): text(v) for k, v in zip(it, it, strict=False)}


def consume_quota_warnings(client: Client, shards: int, sessions: Any, now: datetime | None = None) -> int:
    """Records the quota warnings waiting in every shard's notify stream; returns how many were new."""
    streams = [notify_stream(n) for n in range(shards)]
    ensure_groups(client, streams, GROUP)
    recorded = 0
    for reader in (read_own_pending, read_new):
        for stream, entries in reader(client, streams, GROUP, CONSUMER, READ_LIMIT):
            ids = []
            with sessions.begin() as session:
                for entry_id, flat in entries:
                    ids.append(entry_id)
                    if flat is None:           # trimmed while pending
                        continue
                    f = _fields(flat)
                    try:
                        acct, period, level = f["acct"], f["period"], int(f["level"])
                        used, limit, ts_ms = int(f["used"]), int(f["limit"]), int(f["ts_ms"])
                    except (KeyError, ValueError):
                        log.warning("skipping a malformed quota warning %s in %s: %r", text(entry_id), stream, f)
                        continue
                    if not ID_RE.match(acct):
                        continue
                    recorded += record_quota_warning(session, acct, period, level, used, limit, ts_ms,
                                                     now) is not None
            if ids:
                call_on(client, stream, "XACK", stream, GROUP, *ids)
    return recorded


def anomalies_due(ch: Any, sessions: Any, now: datetime) -> int:
    from billing_worker.anomalies import usage_anomalies
    from billing_worker.periods import current_period
    today = now.astimezone(UTC).date()
    first_recent = today - timedelta(days=ANOMALY_RECENT_DAYS - 1)
    periods = sorted({current_period(now), first_recent.strftime("%Y-%m")})
    flagged = [a for p in periods for a in usage_anomalies(ch, p) if first_recent <= a.day <= today]
    return record_anomalies(sessions, flagged, now)


def _clickhouse() -> Any:
    from billing_worker import actors
    return actors.resources()[1]


class NotificationScheduler(StoreThread):
    """Every `interval_s`: records the quota warnings, invoice and anomaly notifications, then delivers what is due.

    The database is opened lazily in this thread (`opener`, default billing.store.open_accounts(): a Store with
    `.redis`, `.projector.shards` and `.accounts.sessions`), as LastUsedScheduler does: a warning is logged once
    when it cannot be opened and the tick is skipped. SMTP settings are read once (billing.notifications_settings);
    without them email waits. `clock` pins time in tests."""

    purpose = "sending notifications"

    def __init__(self, interval_s: float = INTERVAL_S, opener: Callable[[], Any] | None = None,
                 clickhouse: Callable[[], Any] | None = _clickhouse, smtp: SmtpSettings | None = None,
                 http: Any = None, clock: Callable[[], datetime] | None = None,
                 anomaly_interval_s: float = ANOMALY_INTERVAL_S) -> None:
        super().__init__("notification-scheduler", interval_s, opener)
        self.clickhouse = clickhouse
        self.smtp = smtp
        self.smtp_read = smtp is not None
        self.http = http or UrllibPoster()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.anomaly_interval_s = anomaly_interval_s
        self.last_anomaly_check: datetime | None = None

    def open(self) -> Any:
        if not self.smtp_read:
            self.smtp_read = True
            try:
                self.smtp = SmtpSettings.from_env()
            except Exception as exc:
                log.warning("notification emails are not sent: %s", exc)
            if self.smtp is None:
                log.info("SMTP_HOST is not set: notification emails wait until it is")
        return super().open()

    def work(self, store: Any) -> dict[str, Any]:
        """One round: produce, then deliver (`tick()` gives None when the database could not be opened)."""
        now = self.clock()
        sessions = store.accounts.sessions
        result: dict[str, Any] = {}
        try:
            result["quota"] = consume_quota_warnings(store.redis, store.projector.shards, sessions, now)
        except Exception:           # Redis restarting: the entries wait in the streams
            log.warning("could not read the quota warnings", exc_info=True)
        try:
            result["invoices"] = produce_invoice_notifications(sessions, now)
        except Exception:
            log.warning("could not scan the invoices for notifications", exc_info=True)
        if self.clickhouse is not None and (self.last_anomaly_check is None or now - self.last_anomaly_check
                                            >= timedelta(seconds=self.anomaly_interval_s)):
            self.last_anomaly_check = now
            try:
                result["anomalies"] = anomalies_due(self.clickhouse(), sessions, now)
            except Exception:
                log.warning("could not check the usage anomalies", exc_info=True)
        try:
            result["delivered"] = deliver_due(sessions, self.smtp, self.http, now).as_dict()
        except Exception:
            log.warning("could not deliver the notifications", exc_info=True)
        return result
