"""The system-of-record tables (SQLAlchemy 2.x, the same schema on SQLite and PostgreSQL).

Ids are opaque lowercase strings (the API key format embeds the account and key ids). Money is integer minor
units with its currency. Times are timezone-aware UTC. `accounts.version` grows by one on every change to the
account, its subscription, keys or boosts: the Redis projection keeps the highest version it was given, so
concurrent writers cannot leave an older state in Redis. Schema changes go through Alembic
(billing/db/migrations); `migrate()` applies them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from billing.crypto import EncryptedString


class Base(DeclarativeBase):
    pass


UTC_TIME = DateTime(timezone=True)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    billing_email: Mapped[str | None] = mapped_column(String(320))
    country: Mapped[str] = mapped_column(String(2))            # ISO 3166-1 alpha-2
    region: Mapped[str] = mapped_column(String(8), default="")  # ISO 3166-2 subdivision code, e.g. "CA"
    tax_id: Mapped[str | None] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))           # fixed at creation
    language: Mapped[str] = mapped_column(String(8), default="en")
    status: Mapped[str] = mapped_column(String(16), default="active")   # active | suspended
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)

    subscription: Mapped[Subscription] = relationship(back_populates="account", uselist=False)
    keys: Mapped[list[ApiKey]] = relationship(back_populates="account", order_by="ApiKey.created_at")
    boosts: Mapped[list[Boost]] = relationship(back_populates="account", order_by="Boost.created_at")


class Subscription(Base):
    __tablename__ = "subscriptions"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    plan: Mapped[str] = mapped_column(String(32))
    since: Mapped[datetime] = mapped_column(UTC_TIME)
    custom_quota: Mapped[int | None] = mapped_column(BigInteger)      # monthly calls; None = the plan's
    overage_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    scheduled_plan: Mapped[str | None] = mapped_column(String(32))    # a downgrade or cancel at period end
    scheduled_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    # unpaid invoice past its retries on a plan whose dunning consequence is "suspend": the gateway applies the
    # free plan's limits until a payment succeeds (billing.dunning)
    restricted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    account: Mapped[Account] = relationship(back_populates="subscription")


class PlanChange(Base):
    __tablename__ = "plan_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    from_plan: Mapped[str | None] = mapped_column(String(32))         # None: the account was created
    to_plan: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTC_TIME)
    actor: Mapped[str] = mapped_column(String(64))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)      # of the whole key; the key is never stored
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)
    last_used_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    created_by: Mapped[str | None] = mapped_column(String(32))         # mem_... that created it (migration 0007)

    account: Mapped[Account] = relationship(back_populates="keys")


class Boost(Base):
    __tablename__ = "boosts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    until: Mapped[datetime] = mapped_column(UTC_TIME)
    price_minor: Mapped[int | None] = mapped_column(BigInteger)       # None: granted, not sold
    currency: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)

    account: Mapped[Account] = relationship(back_populates="boosts")


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_account_at", "account_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTC_TIME)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


class InvoiceCounter(Base):
    """The last invoice number issued in a year; incremented in the invoice's own transaction (gap-free)."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger, default=0)


class Invoice(Base):
    """One per (account, period): the unique constraint makes a second close, or a concurrent one, fail to
    insert instead of issuing twice. States: draft -> open -> paid | void | uncollectible."""

    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("account_id", "period", name="uq_invoices_account_period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)          # AH-2026-000123
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))                        # YYYY-MM, UTC calendar month
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    language: Mapped[str] = mapped_column(String(8))
    issued_at: Mapped[datetime] = mapped_column(UTC_TIME)
    due_at: Mapped[datetime] = mapped_column(UTC_TIME)
    subtotal_minor: Mapped[int] = mapped_column(BigInteger)
    tax_minor: Mapped[int] = mapped_column(BigInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    tax: Mapped[dict[str, object]] = mapped_column(JSON)      # rate (percent, decimal string), jurisdiction, note
    customer: Mapped[dict[str, object]] = mapped_column(JSON)  # the account's billing details when issued
    usage: Mapped[dict[str, object]] = mapped_column(JSON)    # calls, tokens, list cost by model
    paid_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    voided_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)

    lines: Mapped[list[InvoiceLine]] = relationship(back_populates="invoice", order_by="InvoiceLine.position")


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))             # subscription | overage | boost
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[str] = mapped_column(String(32))         # decimal text: days, calls, 1
    unit_amount_minor: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class PeriodClose(Base):
    """A period whose close ran to the end (the scheduler runs a missed close when the worker starts)."""

    __tablename__ = "period_closes"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    closed_at: Mapped[datetime] = mapped_column(UTC_TIME)
    invoices: Mapped[int] = mapped_column(Integer)


# -- notifications (migration 0003; billing/notifications.py) ---------------------------------------------------


class NotificationSettings(Base):
    """An account's notification settings: the webhook URL and its signing secret, the quota warning levels.
    No row: no webhook, warnings at 80 and 100 %. Email goes to accounts.billing_email."""

    __tablename__ = "notification_settings"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    # Plain text for now (shown once when set, never printed again); issue 10 encrypts it at rest.
    webhook_secret: Mapped[str | None] = mapped_column(EncryptedString(128))       # encrypted at rest
    warning_levels: Mapped[list[int]] = mapped_column(JSON, default=lambda: [80, 100])
    updated_at: Mapped[datetime] = mapped_column(UTC_TIME)


class Notification(Base):
    """One event for an account, recorded once: (account_id, dedup_key) is unique, e.g. "quota_80:2026-11",
    "invoice_issued:AH-2026-000001", "usage_anomaly:2026-11-05". Kinds: quota_80, quota_100, invoice_issued,
    invoice_due_soon, invoice_overdue, usage_anomaly."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("account_id", "dedup_key", name="uq_notifications_account_dedup"),
                      Index("ix_notifications_account_created", "account_id", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(32))
    dedup_key: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="notification", order_by="Delivery.channel")


class Delivery(Base):
    """A notification's delivery on one channel (email | webhook). States: pending -> sending -> delivered, or
    failed (retried at next_attempt_at with backoff) -> ... -> gave_up. `sending` is a lease: a sender that died
    mid-send leaves it, and it is sent again once next_attempt_at has passed."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("notification_id", "channel", name="uq_deliveries_notification_channel"),
                      Index("ix_deliveries_state_next", "state", "next_attempt_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    target: Mapped[str | None] = mapped_column(String(2000))      # the address or URL of the last attempt
    delivered_at: Mapped[datetime | None] = mapped_column(UTC_TIME)

    notification: Mapped[Notification] = relationship(back_populates="deliveries")


__all__ = ["Account", "ApiKey", "AuditEntry", "Base", "Boost", "Delivery", "Invoice", "InvoiceCounter",
           "InvoiceLine", "Notification", "NotificationSettings", "PeriodClose", "PlanChange", "Subscription"]


# -- payments (migration 0004; billing/payments) ----------------------------------------------------------------

# A payment in one of these states holds the invoice: the partial unique index lets at most one exist per invoice,
# so two workers charging at once cannot both insert (and so both call the provider), whatever the provider does
# with idempotency keys. processing and requires_action may still turn into money; the others are money taken.
LIVE_PAYMENT_STATES = ("processing", "requires_action", "succeeded", "partially_refunded", "refunded")
PAYMENT_STATES = ("pending", "processing", "succeeded", "failed", "requires_action", "refunded", "partially_refunded")
PAYMENT_PROVIDERS = ("stripe", "paypal", "bank_transfer")


class PaymentCustomer(Base):
    """The account's customer at a provider (one per account and provider), created on first use."""

    __tablename__ = "payment_customers"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    customer_id: Mapped[str] = mapped_column(EncryptedString(255))                 # encrypted at rest
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)


class PaymentMethod(Base):
    """A payment method on file: the provider's ids and what it shows (brand, last 4); never a card number."""

    __tablename__ = "payment_methods"
    __table_args__ = (Index("ix_payment_methods_account", "account_id"),
                      UniqueConstraint("provider", "provider_method_id", name="uq_payment_methods_provider_method"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    provider: Mapped[str] = mapped_column(String(16))                     # stripe | paypal | bank_transfer
    provider_customer_id: Mapped[str | None] = mapped_column(EncryptedString(255))  # encrypted at rest
    provider_method_id: Mapped[str | None] = mapped_column(String(255))  # pm_...; None for bank transfer
    brand: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)


class Payment(Base):
    """One attempt to collect an invoice. States: pending (bank transfer awaited) | processing -> succeeded |
    failed | requires_action; succeeded -> partially_refunded -> refunded. A failed attempt frees the invoice for
    the next one (attempt n+1, its own idempotency key)."""

    __tablename__ = "payments"
    __table_args__ = (
        Index("ix_payments_account_created", "account_id", "created_at"),
        UniqueConstraint("idempotency_key", name="uq_payments_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    provider: Mapped[str] = mapped_column(String(16))
    payment_method_id: Mapped[int | None] = mapped_column(ForeignKey("payment_methods.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(24))
    provider_payment_id: Mapped[str | None] = mapped_column(String(255))  # PaymentIntent id, transfer reference
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    idempotency_key: Mapped[str] = mapped_column(String(128))              # invoice-<number>-attempt-<n>
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)
    updated_at: Mapped[datetime] = mapped_column(UTC_TIME)
    # requires_action (migration 0008): what the customer needs to finish the payment on-session; the
    # PaymentIntent's client secret is encrypted at rest and dropped once the attempt settles.
    client_secret: Mapped[str | None] = mapped_column(EncryptedString(255))        # encrypted at rest
    action_url: Mapped[str | None] = mapped_column(String(2000))          # provider's or our confirmation page


# The "at most one live payment per invoice" guard (a partial unique index, on PostgreSQL and SQLite alike).
Index("uq_payments_invoice_live", Payment.invoice_id, unique=True,
      postgresql_where=Payment.state.in_(LIVE_PAYMENT_STATES), sqlite_where=Payment.state.in_(LIVE_PAYMENT_STATES))


class CreditNoteCounter(Base):
    """The last credit note number issued in a year (gap-free, like invoice_counters)."""

    __tablename__ = "credit_note_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger, default=0)


class CreditNote(Base):
    __tablename__ = "credit_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)          # CN-2026-000001
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)


class Refund(Base):
    """A refund of a payment. States: pending (recorded before the provider is called, so concurrent refunds
    cannot exceed the payment) -> succeeded (with its credit note) | failed."""

    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    provider_refund_id: Mapped[str | None] = mapped_column(String(255))
    credit_note_number: Mapped[str | None] = mapped_column(ForeignKey("credit_notes.number"))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    failure_message: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)
    reason: Mapped[str | None] = mapped_column(String(300))   # for its credit note (migration 0008)
    actor: Mapped[str | None] = mapped_column(String(64))     # who asked for it (migration 0008)


__all__ += ["LIVE_PAYMENT_STATES", "PAYMENT_PROVIDERS", "PAYMENT_STATES", "CreditNote", "CreditNoteCounter",
            "Payment", "PaymentCustomer", "PaymentMethod", "Refund"]


class ProviderEvent(Base):
    """A payment provider's webhook event, recorded once (unique provider + event id) and applied by the worker.
    States: received -> applied | ignored."""

    __tablename__ = "provider_events"
    __table_args__ = (UniqueConstraint("provider", "provider_event_id", name="uq_provider_events_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTC_TIME)
    applied_at: Mapped[datetime | None] = mapped_column(UTC_TIME)


class Dunning(Base):
    """An invoice whose payment failed: when the next retry is due, how many were made, and what happened.
    States: retrying -> recovered (paid) | exhausted (the plan's consequence applied)."""

    __tablename__ = "dunning"

    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    failed_at: Mapped[datetime] = mapped_column(UTC_TIME)       # the first failed charge
    retries: Mapped[int] = mapped_column(Integer, default=0)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    consequence: Mapped[str | None] = mapped_column(String(16))  # suspend | uncollectible, once exhausted
    updated_at: Mapped[datetime] = mapped_column(UTC_TIME)


__all__ += ["Dunning", "ProviderEvent"]


# -- teams and the management API (migration 0007; billing/members.py, api/) ---------------------------------------

MEMBER_ROLES = ("owner", "admin", "billing", "developer", "viewer")


class Member(Base):
    """A person who may manage an account through the management API and the dashboard. The member token is never
    stored: only its SHA-256. `removed_at` set: the member and the token no longer work (the row stays for the
    audit log)."""

    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)            # mem_...
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)
    removed_at: Mapped[datetime | None] = mapped_column(UTC_TIME)


class Invite(Base):
    """A one-time invitation (the token's SHA-256 only) to join an account with a role, until `expires_at`."""

    __tablename__ = "invites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)            # inv_...
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)
    expires_at: Mapped[datetime] = mapped_column(UTC_TIME)
    accepted_at: Mapped[datetime | None] = mapped_column(UTC_TIME)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC_TIME)


class IdempotencyRecord(Base):
    """The answer to a POST made with an `Idempotency-Key`, kept so a retry gets the same answer (24 h). `caller` is
    who sent it (operator, mem_..., key_...), so two callers' keys never collide; `request_sha256` is of the method,
    path and body, so the same key with another request is refused. The stored body never holds a secret shown once
    (those are replaced by a note before storing)."""

    __tablename__ = "idempotency_records"

    caller: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTC_TIME)
