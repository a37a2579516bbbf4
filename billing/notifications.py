"""Customer notifications: recorded once, delivered by email and webhook, retried with backoff.

- **Recorded once.** `record()` inserts a notification unless the account already has one with the same dedup
  key (`INSERT ... ON CONFLICT DO NOTHING` on the unique (account_id, dedup_key)), so producers may run again, or
  twice at once, without a second notification. With it, one delivery per channel the account has: `email` when
  it has a billing email, `webhook` when it has a webhook URL (billing.accounts.AccountService.set_webhook).
- **Producers** (the database side here; the quota stream and the anomalies in billing_worker.notify):
  quota_80 / quota_100 (dedup "quota_80:2026-11"), invoice_issued, invoice_due_soon (3 days before due_at, the
  invoice open), invoice_overdue (past due_at, open) (dedup "<kind>:<invoice number>"), usage_anomaly
  (dedup "usage_anomaly:2026-11-05"); billing.dunning's payment_failed, payment_action_required (the customer
  must authenticate the payment: `action` says how, `action_url` where), payment_reminder (an overdue invoice of
  a bank-transfer account) (dedup "<kind>:<invoice number>:<step>") and payment_recovered. The dunning payloads
  carry their facts (`next_at`, `last`, `consequence`, `transfer`, `failure_code`, `action_url`) and English
  sentences (`next`, `action`); emails say the facts in the account's language (`dunning_sentences`).
- **Delivery.** `deliver_due()` claims the due deliveries (state -> `sending`, attempts + 1, a lease in
  next_attempt_at; PostgreSQL `FOR UPDATE SKIP LOCKED`, SQLite `BEGIN IMMEDIATE`), sends them outside the
  transaction, and records the outcome: `delivered` (never sent again), or `failed` with the error and the next
  attempt after 1 min, 5 min, 30 min, 2 h, 12 h; after the sixth failed attempt `gave_up`. A sender that dies
  mid-send leaves `sending`; the delivery is sent again when the lease ends (at least once: receivers dedupe by
  the `X-AIHub-Notification-Id` header / the body's `id`).
- **Email**: plain text in the account's language (English, or Chinese for `zh*`), over SMTP (smtplib;
  billing.notifications_settings). Without SMTP settings email deliveries stay pending.
- **Webhook**: HTTP POST of a JSON body, 5 s timeout, redirects not followed, 2xx = delivered, signed:
  `X-AIHub-Timestamp: <unix s>` and `X-AIHub-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`;
  `verify_signature()` is what a receiver runs.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy import exists, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload, sessionmaker

from billing import mail
from billing.db.models import Account, Delivery, Invoice, Notification, NotificationSettings
from billing.errors import Conflict, InvalidInput, NotFound
from billing.notifications_settings import SmtpSettings
from billing.times import aware, iso

KINDS = ("quota_80", "quota_100", "invoice_issued", "invoice_due_soon", "invoice_overdue", "usage_anomaly",
         "payment_failed", "payment_action_required", "payment_reminder", "payment_recovered")
CHANNELS = ("email", "webhook")
STATES = ("pending", "sending", "delivered", "failed", "gave_up")
DEFAULT_LEVELS = (80, 100)
BACKOFF_S = (60, 300, 1800, 7200, 43200)       # after the 1st .. 5th failed attempt; the 6th failure gives up
LEASE_S = 120                                  # a claimed delivery not finished by then is sent again
WEBHOOK_TIMEOUT_S = 5.0
DUE_SOON = timedelta(days=3)
ISSUED_LOOKBACK = timedelta(days=7)            # invoices issued longer ago are not announced (first start)
SIGNATURE_TOLERANCE_S = 300
USER_AGENT = "AIHub-Webhooks/1"


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- recording -------------------------------------------------------------------------------------------------

def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Notification)
    if dialect == "sqlite":
        return sqlite.insert(Notification)
    raise InvalidInput(f"notifications need SQLite or PostgreSQL, not {dialect}")


def record(session: Session, account_id: str, kind: str, dedup_key: str, payload: Mapping[str, Any],
           now: datetime | None = None) -> int | None:
    """Records a notification and its deliveries in `session`'s transaction (the caller commits). Returns the new
    notification's id, or None when the account already has one with `dedup_key` (nothing is written)."""
    if kind not in KINDS:
        raise InvalidInput(f"Unknown notification kind {kind!r}; one of {', '.join(KINDS)}.")
    account = session.get(Account, account_id)
    if account is None:
        return None
    now = now or utcnow()
    statement = (_insert(session)
                 .values(account_id=account_id, kind=kind, dedup_key=dedup_key, payload=dict(payload), created_at=now)
                 .on_conflict_do_nothing(index_elements=["account_id", "dedup_key"])
                 .returning(Notification.id))
    notification_id = session.execute(statement).scalar()
    if notification_id is None:
        return None
    settings = session.get(NotificationSettings, account_id)
    channels = []
    if account.billing_email:
        channels.append(("email", account.billing_email))
    if settings is not None and settings.webhook_url:
        channels.append(("webhook", settings.webhook_url))
    for channel, target in channels:
        session.add(Delivery(notification_id=notification_id, channel=channel, state="pending", attempts=0,
                             next_attempt_at=now, target=target))
    session.flush()
    return int(notification_id)


def warning_levels(session: Session, account_id: str) -> tuple[int, ...]:
    settings = session.get(NotificationSettings, account_id)
    if settings is None or settings.warning_levels is None:
        return DEFAULT_LEVELS
    return tuple(int(level) for level in settings.warning_levels)


def record_quota_warning(session: Session, account_id: str, period: str, level: int, used: int, limit: int,
                         ts_ms: int, now: datetime | None = None) -> int | None:
    """A settle's warning (lua/settle.lua: 80 and 100 % of the limit, once per period), unless the account
    turned that level off."""
    if level not in (80, 100) or level not in warning_levels(session, account_id):
        return None
    payload = {"period": period, "level": level, "used": used, "limit": limit, "at": iso(
        datetime.fromtimestamp(ts_ms / 1000, UTC))}
    return record(session, account_id, f"quota_{level}", f"quota_{level}:{period}", payload, now)


def _invoice_payload(invoice: Invoice) -> dict[str, Any]:
    return {"number": invoice.number, "period": invoice.period, "status": invoice.status,
            "currency": invoice.currency, "total_minor": invoice.total_minor,
            "issued_at": iso(invoice.issued_at), "due_at": iso(invoice.due_at)}


def _not_recorded(kind: str) -> Any:
    return ~exists().where(Notification.account_id == Invoice.account_id,
                           Notification.dedup_key == literal(f"{kind}:") + Invoice.number)


def produce_invoice_notifications(sessions: sessionmaker[Session], now: datetime | None = None) -> dict[str, int]:
    """Scans the invoices: issued in the last 7 days (invoice_issued), open and due within 3 days
    (invoice_due_soon), open and past due (invoice_overdue); records the ones not recorded yet."""
    now = now or utcnow()
    queries = {
        "invoice_issued": select(Invoice).where(Invoice.status != "draft", Invoice.issued_at <= now,
                                                Invoice.issued_at >= now - ISSUED_LOOKBACK),
        "invoice_due_soon": select(Invoice).where(Invoice.status == "open", Invoice.due_at > now,
                                                  Invoice.due_at <= now + DUE_SOON),
        "invoice_overdue": select(Invoice).where(Invoice.status == "open", Invoice.due_at <= now),
    }
    counts = {}
    for kind, query in queries.items():
        with sessions.begin() as session:
            invoices = list(session.scalars(query.where(_not_recorded(kind)).order_by(Invoice.id)))
            counts[kind] = sum(record(session, i.account_id, kind, f"{kind}:{i.number}", _invoice_payload(i), now)
                               is not None for i in invoices)
    return counts


def record_anomalies(sessions: sessionmaker[Session], anomalies: Iterable[Any], now: datetime | None = None) -> int:
    """usage_anomaly for each billing_worker.anomalies.Anomaly (acct, day, calls, trailing_avg, ratio)."""
    recorded = 0
    with sessions.begin() as session:
        for a in anomalies:
            day = a.day.isoformat() if isinstance(a.day, date) else str(a.day)
            payload = {"day": day, "calls": int(a.calls), "trailing_avg": float(a.trailing_avg),
                       "ratio": float(a.ratio)}
            recorded += record(session, a.acct, "usage_anomaly", f"usage_anomaly:{day}", payload, now) is not None
    return recorded


# -- rendering ---------------------------------------------------------------------------------------------------

def _money(minor: Any, currency: Any) -> str:
    value = int(minor)
    sign = "-" if value < 0 else ""
    return f"{currency} {sign}{abs(value) // 100}.{abs(value) % 100:02d}"


def _day(iso: Any) -> str:
    return str(iso or "")[:10]


def _chinese(language: str) -> bool:
    return language.lower().startswith("zh")


# The dunning sentences, said in the email's language from the facts billing.dunning puts in the payload:
# `next_at` (the next retry or reminder; null at the last step), `last`, `consequence` (at the last step: the plan's
# `dunning`, suspend | uncollectible), `action_url` (payment_action_required), `failure_code` (payment_failed and
# payment_action_required; null when nothing could be charged). billing.dunning also records the English sentences
# as `next` and `action`, which webhook receivers read; a payload recorded before the facts has only those.
_DUNNING: dict[bool, dict[str, str]] = {
    False: {"retry": "We will try again on {day}; you can also update your payment method.",
            "no_retry": "No further attempts will be made; please pay by another method.",
            "remind": "We will remind you again on {day}.",
            "no_reminder": "This is the last reminder.",
            "confirm": "Confirm the payment here: {url}",
            "no_link": "Add another payment method, or ask us for a link to confirm this payment."},
    True: {"retry": "我们将于 {day} 再次尝试扣款；您也可以更新付款方式。",
           "no_retry": "我们不会再尝试扣款，请通过其他方式付款。",
           "remind": "我们将于 {day} 再次提醒您。",
           "no_reminder": "这是最后一次提醒。",
           "confirm": "请在此确认付款：{url}",
           "no_link": "请添加其他付款方式，或联系我们获取确认此付款的链接。"},
}
CONSEQUENCES: dict[bool, dict[str, str]] = {
    False: {"suspend": "Until it is paid, your plan is limited to the free plan's limits.",
            "uncollectible": "The invoice is now marked uncollectible; paying it still settles it."},
    True: {"suspend": "在付清之前，您的套餐将被限制为免费套餐的额度。",
           "uncollectible": "该发票现已标记为无法收回；您仍可付款结清。"},
}
# The provider's failure message is English: a Chinese email says the failure code's meaning instead.
_FAILURE_ZH = {"card_declined": "银行卡被拒绝", "insufficient_funds": "余额不足", "expired_card": "银行卡已过期",
               "incorrect_cvc": "安全码错误", "incorrect_number": "卡号错误", "processing_error": "处理付款时出错",
               "authentication_required": "此付款需要您验证", "payer_action_required": "此付款需要您在 PayPal 确认",
               "instrument_declined": "付款方式被拒绝", "not_received": "支付服务商未收到此次扣款",
               "canceled": "付款已取消", "voided": "订单已作废"}


def dunning_sentences(kind: str, facts: Mapping[str, Any], language: str) -> tuple[str, str]:
    """(next, action) of a dunning notification in `language` (Chinese for zh*, English otherwise), from its
    facts: what happens next (the next retry or reminder, or the last step's consequence), and for
    payment_action_required what to do (confirm at `action_url`, else another payment method)."""
    chinese = _chinese(language)
    words = _DUNNING[chinese]
    if facts.get("next_at"):
        following = words["remind" if kind == "payment_reminder" else "retry"].format(day=_day(facts["next_at"]))
    else:
        consequence = CONSEQUENCES[chinese].get(str(facts.get("consequence") or ""), "")
        sentence = words["no_reminder" if kind == "payment_reminder" else "no_retry"]
        following = ("" if chinese else " ").join(part for part in (sentence, consequence) if part)
    action = ""
    if kind == "payment_action_required":
        url = facts.get("action_url")
        action = words["confirm"].format(url=url) if url else words["no_link"]
    return following, action


def _reason(payload: Mapping[str, Any], chinese: bool) -> str:
    if not chinese or "failure_code" not in payload:
        return str(payload.get("reason", ""))
    code = payload["failure_code"]
    if not code:
        return "未能扣款"
    return _FAILURE_ZH.get(str(code), f"未能扣款（{code}）")


_EN: dict[str, tuple[str, str]] = {
    "quota_80": ("You have used {level}% of your monthly calls ({period})",
                 "Your account {name} has used {used} of its {limit} calls for {period} ({level}%).\n"
                 "When the quota is reached, calls are refused unless overage is on. A boost or a plan upgrade adds "
                 "calls."),
    "quota_100": ("You have used all of your monthly calls ({period})",
                  "Your account {name} has used {used} of its {limit} calls for {period} (100%).\n"
                  "Further calls this month are refused unless overage is on. A boost or a plan upgrade adds calls."),
    "invoice_issued": ("Invoice {number} for {period}",
                       "Invoice {number} for {period} has been issued to {name}.\n"
                       "Total: {total}\nDue: {due}\nStatus: {status}"),
    "invoice_due_soon": ("Invoice {number} is due on {due}",
                         "Invoice {number} ({period}, {total}) for {name} is due on {due}."),
    "invoice_overdue": ("Invoice {number} is overdue",
                        "Invoice {number} ({period}, {total}) for {name} was due on {due} and is not paid yet."),
    "usage_anomaly": ("Unusual usage on {day}",
                      "Your account {name} made {calls} calls on {day}, {ratio} times its average of the days before "
                      "({avg} a day).\nIf you do not expect this, check your API keys."),
    "payment_failed": ("Payment of invoice {number} failed",
                       "The payment of invoice {number} ({period}, {total}) for {name} failed: {reason}.\n{next}"),
    "payment_action_required": ("Confirm the payment of invoice {number}",
                                "Your bank (or PayPal) asks you to confirm the payment of invoice {number} ({period}, "
                                "{total}) for {name} before it can be charged.\n{action}\n{next}"),
    "payment_reminder": ("Reminder: invoice {number} is overdue",
                         "Invoice {number} ({period}, {total}) for {name} was due on {due} and we have not received "
                         "your bank transfer yet. Please transfer {total} with the reference {number}.\n{next}"),
    "payment_recovered": ("Invoice {number} is paid",
                          "Invoice {number} ({period}, {total}) for {name} is paid. Thank you; your plan is restored "
                          "if it was limited."),
}
_ZH: dict[str, tuple[str, str]] = {
    "quota_80": ("您已使用本月调用额度的 {level}%（{period}）",
                 "您的账户 {name} 在 {period} 已使用 {used} / {limit} 次调用（{level}%）。\n"
                 "额度用尽后，除非开启超额计费，调用将被拒绝。购买加量包或升级套餐可增加调用次数。"),
    "quota_100": ("您已用完本月调用额度（{period}）",
                  "您的账户 {name} 在 {period} 已使用 {used} / {limit} 次调用（100%）。\n"
                  "除非开启超额计费，本月后续调用将被拒绝。购买加量包或升级套餐可增加调用次数。"),
    "invoice_issued": ("发票 {number}（{period}）",
                       "已向 {name} 开具 {period} 的发票 {number}。\n金额：{total}\n到期日：{due}\n状态：{status}"),
    "invoice_due_soon": ("发票 {number} 将于 {due} 到期",
                         "{name} 的发票 {number}（{period}，{total}）将于 {due} 到期。"),
    "invoice_overdue": ("发票 {number} 已逾期",
                        "{name} 的发票 {number}（{period}，{total}）已于 {due} 到期，尚未支付。"),
    "usage_anomaly": ("{day} 用量异常",
                      "您的账户 {name} 在 {day} 调用了 {calls} 次，是此前日均（{avg} 次）的 {ratio} 倍。\n"
                      "如非预期，请检查您的 API 密钥。"),
    "payment_failed": ("发票 {number} 扣款失败",
                       "{name} 的发票 {number}（{period}，{total}）扣款失败：{reason}。\n{next}"),
    "payment_action_required": ("请确认发票 {number} 的付款",
                                "您的银行（或 PayPal）要求您先确认 {name} 的发票 {number}（{period}，{total}）的付款，"
                                "然后才能扣款。\n{action}\n{next}"),
    "payment_reminder": ("提醒：发票 {number} 已逾期",
                         "{name} 的发票 {number}（{period}，{total}）已于 {due} 到期，我们尚未收到您的银行转账。"
                         "请转账 {total}，并注明参考号 {number}。\n{next}"),
    "payment_recovered": ("发票 {number} 已支付",
                          "{name} 的发票 {number}（{period}，{total}）已支付。谢谢！如套餐曾被限制，现已恢复。"),
}
_STATUS_ZH = {"open": "待支付", "paid": "已支付", "void": "已作废", "uncollectible": "无法收回", "draft": "草稿"}


def render_email(kind: str, payload: Mapping[str, Any], language: str, account_name: str) -> tuple[str, str]:
    """(subject, plain-text body) in the account's language: Chinese for zh*, English otherwise."""
    chinese = _chinese(language)
    subject, body = (_ZH if chinese else _EN)[kind]
    status = str(payload.get("status", ""))
    following, action = str(payload.get("next", "")), str(payload.get("action", ""))
    if "last" in payload:           # the dunning facts (a payload recorded before them: its English text as is)
        following, action = dunning_sentences(kind, payload, language)
    values = {"name": account_name, "period": payload.get("period", ""), "level": payload.get("level", ""),
              "used": payload.get("used", ""), "limit": payload.get("limit", ""), "number": payload.get("number", ""),
              "total": _money(payload["total_minor"], payload["currency"]) if "total_minor" in payload else "",
              "due": _day(payload.get("due_at")), "status": _STATUS_ZH.get(status, status) if chinese else status,
              "day": payload.get("day", ""), "calls": payload.get("calls", ""), "ratio": payload.get("ratio", ""),
              "avg": payload.get("trailing_avg", ""), "reason": _reason(payload, chinese),
              "next": following, "action": action}
    footer = ("\n\n—— AI Hub\n（此邮件由系统自动发送。）" if chinese
              else "\n\n-- AI Hub\n(This message was sent automatically.)")
    return "[AI Hub] " + subject.format(**values), body.format(**values) + footer


def webhook_body(notification: Notification) -> bytes:
    """The webhook's JSON body: id, type (the kind), account, dedup_key, created_at, data (the payload)."""
    return orjson.dumps({"id": notification.id, "type": notification.kind, "account": notification.account_id,
                         "dedup_key": notification.dedup_key, "created_at": iso(notification.created_at),
                         "data": dict(notification.payload)}, option=orjson.OPT_SORT_KEYS)


# -- signatures --------------------------------------------------------------------------------------------------

def new_webhook_secret() -> str:
    import secrets
    return "whsec_" + secrets.token_hex(32)


def _hmac(secret: str, ts: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, ts: int, body: bytes) -> str:
    """The `X-AIHub-Signature` value: `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`."""
    return f"t={ts},v1={_hmac(secret, ts, body)}"


def verify_signature(secret: str, header: str, body: bytes | str, tolerance_s: float = SIGNATURE_TOLERANCE_S,
                     now: float | None = None) -> bool:
    """True when `header` (X-AIHub-Signature) signs `body` with `secret` and its timestamp is within
    `tolerance_s` of `now` (default: the clock). Several v1= values are accepted (secret rotation)."""
    raw = body.encode() if isinstance(body, str) else body
    ts: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            ts = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if ts is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = _hmac(secret, ts, raw)
    return any(hmac.compare_digest(expected, c) for c in candidates)


# -- delivery ----------------------------------------------------------------------------------------------------

class HttpPoster(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        """POSTs `body`; the HTTP status. Raises OSError when no response came (refused, timeout)."""
        ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class UrllibPoster:
    """The default HttpPoster: stdlib urllib, redirects not followed (a 3xx is a failed delivery)."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(_NoRedirect())

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        from billing.webhook_urls import check_resolved
        check_resolved(url)        # a public address only (billing.webhook_urls)
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with self.opener.open(request, timeout=timeout) as response:
                response.read(65536)
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0
    gave_up: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": self.failed, "gave_up": self.gave_up}


@dataclass(frozen=True)
class _Job:
    delivery_id: int
    attempts: int
    channel: str
    notification: Notification
    account_name: str
    language: str
    email: str | None
    webhook_url: str | None
    webhook_secret: str | None


def _claim(sessions: sessionmaker[Session], now: datetime, limit: int, email: bool) -> list[_Job]:
    with sessions.begin() as session:
        query = (select(Delivery).where(Delivery.state.in_(("pending", "failed", "sending")),
                                        Delivery.next_attempt_at <= now)
                 .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit))
        if not email:
            query = query.where(Delivery.channel != "email")
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        jobs = []
        for delivery in session.scalars(query).all():
            delivery.state, delivery.attempts = "sending", delivery.attempts + 1
            delivery.next_attempt_at = now + timedelta(seconds=LEASE_S)
            stored = session.get(Notification, delivery.notification_id)
            assert stored is not None
            notification = Notification(id=stored.id, account_id=stored.account_id, kind=stored.kind,   # detached copy
                                        dedup_key=stored.dedup_key, payload=dict(stored.payload),
                                        created_at=stored.created_at)
            account = session.get(Account, stored.account_id)
            assert account is not None
            settings = session.get(NotificationSettings, account.id)
            jobs.append(_Job(delivery.id, delivery.attempts, delivery.channel, notification, account.name,
                             account.language, account.billing_email,
                             settings.webhook_url if settings else None, settings.webhook_secret if settings else None))
        return jobs


def _send_email(job: _Job, smtp: SmtpSettings) -> str:
    if not job.email:
        raise _GiveUp("the account has no billing email")
    subject, text = render_email(job.notification.kind, job.notification.payload, job.language, job.account_name)
    message = mail.new_message(smtp.sender, job.email, subject, text)
    message["X-AIHub-Notification-Id"] = str(job.notification.id)
    mail.send(smtp, message)
    return job.email


def _send_webhook(job: _Job, http: HttpPoster, now: datetime) -> str:
    if not job.webhook_url or not job.webhook_secret:
        raise _GiveUp("the account's webhook is turned off")
    body = webhook_body(job.notification)
    ts = int(now.timestamp())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-AIHub-Timestamp": str(ts),
               "X-AIHub-Signature": sign(job.webhook_secret, ts, body),
               "X-AIHub-Notification-Id": str(job.notification.id)}
    status = http.post(job.webhook_url, body, headers, WEBHOOK_TIMEOUT_S)
    if not 200 <= status < 300:
        raise _Failed(f"HTTP {status}")
    return job.webhook_url


class _GiveUp(Exception):
    pass


class _Failed(Exception):
    pass


def deliver_due(sessions: sessionmaker[Session], smtp_settings: SmtpSettings | None, http_client: HttpPoster | None,
                now: datetime | None = None, limit: int = 200) -> DeliveryReport:
    """Sends the deliveries that are due at `now` (pending, failed whose backoff has passed, or a `sending` lease
    that ran out); records each outcome. Email waits while `smtp_settings` is None."""
    now = aware(now or utcnow())
    http = http_client or UrllibPoster()
    report = DeliveryReport()
    for job in _claim(sessions, now, limit, email=smtp_settings is not None):
        target: str | None = None
        error: str | None = None
        give_up = False
        try:
            if job.channel == "email":
                assert smtp_settings is not None
                target = _send_email(job, smtp_settings)
            else:
                target = _send_webhook(job, http, now)
        except _GiveUp as exc:
            error, give_up = str(exc), True
        except _Failed as exc:
            error = str(exc)
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        with sessions.begin() as session:
            delivery = session.get(Delivery, job.delivery_id)
            if delivery is None or delivery.state != "sending" or delivery.attempts != job.attempts:
                continue       # re-claimed by another sender after the lease ran out: its outcome counts
            if target is not None:
                delivery.target = target
            if error is None:
                delivery.state, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
                delivery.last_error = None
                report.delivered += 1
                continue
            delivery.last_error = error[:1000]
            report.errors.append(f"{job.channel} {job.notification.dedup_key}: {error}")
            if give_up or delivery.attempts > len(BACKOFF_S):
                delivery.state, delivery.next_attempt_at = "gave_up", None
                report.gave_up += 1
            else:
                delivery.state = "failed"
                delivery.next_attempt_at = now + timedelta(seconds=BACKOFF_S[delivery.attempts - 1])
                report.failed += 1
    return report


# -- history -----------------------------------------------------------------------------------------------------

def history(sessions: sessionmaker[Session], account_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """An account's notifications, newest first, each with its deliveries' states."""
    with sessions() as session:
        query = (select(Notification).where(Notification.account_id == account_id)
                 .options(selectinload(Notification.deliveries))
                 .order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit))
        return [{"id": n.id, "kind": n.kind, "dedup_key": n.dedup_key, "created_at": iso(n.created_at),
                 "payload": n.payload,
                 "deliveries": [_delivery_view(d) for d in n.deliveries]}
                for n in session.scalars(query)]


def _delivery_view(d: Delivery) -> dict[str, Any]:
    return {"id": d.id, "channel": d.channel, "state": d.state, "attempts": d.attempts, "target": d.target,
            "last_error": d.last_error, "next_attempt_at": iso(d.next_attempt_at), "delivered_at": iso(d.delivered_at)}


def redeliver(sessions: sessionmaker[Session], account_id: str, notification_id: int, delivery_id: int,
              now: datetime | None = None) -> dict[str, Any]:
    """Sends a delivery again: back to `pending`, due at `now`, its attempts counted from 0 (a full retry
    schedule), whatever its state (delivered ones are sent once more: receivers dedupe by the notification id).
    NotFound (delivery_not_found) unless the delivery is the account's notification's; Conflict
    (delivery_in_progress) while a sender holds it, (channel_off) when its channel has no address or URL now.
    Returns the delivery as `history` shows it."""
    now = aware(now or utcnow())
    with sessions.begin() as session:
        delivery = session.get(Delivery, delivery_id, with_for_update=True)
        notification = session.get(Notification, notification_id)
        if (delivery is None or notification is None or delivery.notification_id != notification.id
                or notification.account_id != account_id):
            raise NotFound(f"No delivery {delivery_id} of notification {notification_id}.",
                           code="delivery_not_found")
        if delivery.state == "sending" and delivery.next_attempt_at is not None \
                and aware(delivery.next_attempt_at) > now:
            raise Conflict("This delivery is being sent right now; try again in a few minutes.",
                           code="delivery_in_progress")
        account = session.get(Account, account_id)
        settings = session.get(NotificationSettings, account_id)
        if delivery.channel == "email" and not (account is not None and account.billing_email):
            raise Conflict("The account has no billing email to send to.", code="channel_off")
        if delivery.channel == "webhook" and not (settings is not None and settings.webhook_url):
            raise Conflict("The account's webhook is turned off.", code="channel_off")
        delivery.state, delivery.attempts, delivery.next_attempt_at = "pending", 0, now
        return _delivery_view(delivery)


def public_target(target: str | None) -> str | None:
    """A delivery target or webhook URL fit to show: an email address as is; a URL without its query string and
    fragment (where receivers often put tokens), which is replaced by `?...`."""
    if target is None or "://" not in target:
        return target
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(target)
    hidden = "?..." if parts.query or parts.fragment else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + hidden
