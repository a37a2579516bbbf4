"""An account's notifications (quota warnings, invoices, payments, usage anomalies; billing/notifications.py)
with the state of each delivery (email, webhook), and sending a delivery again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel

from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, needs
from api.routes._common import require_account
from billing.notifications import history, public_target, redeliver

router = APIRouter(tags=["notifications"])
MAX_ID = 2**31 - 1
NEWEST = 1000                      # the listing covers the newest 1000 notifications
NotificationId = Annotated[int, Path(ge=1, le=MAX_ID, description="The notification's id.")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_ID, description="The delivery's id.")]


class DeliveryView(BaseModel):
    """One channel's delivery. state: pending, sending, delivered, failed (retried at next_attempt_at), gave_up."""

    id: int
    channel: str                   # email | webhook
    state: str
    attempts: int
    target: str | None             # the address or URL of the last attempt (a URL without its query string)
    last_error: str | None
    next_attempt_at: str | None
    delivered_at: str | None


class NotificationView(BaseModel):
    """kind: quota_80, quota_100, invoice_issued, invoice_due_soon, invoice_overdue, usage_anomaly, payment_failed,
    payment_recovered; `payload` is the webhook body's `data` (money in minor units with its currency)."""

    id: int
    kind: str
    dedup_key: str
    created_at: str
    payload: dict[str, Any]
    deliveries: list[DeliveryView]


def _public(delivery: dict[str, Any]) -> dict[str, Any]:
    return {**delivery, "target": public_target(delivery["target"])}


@router.get("/accounts/{account_id}/notifications", response_model=Page[NotificationView], summary="Notifications",
            openapi_extra=needs("notifications:read"))
def list_notifications(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                       starting_after: Cursor = None) -> dict[str, object]:
    """The account's notifications, newest first (the newest 1000), each with its deliveries; the cursor is a
    notification id. 404 account_not_found."""
    caller.require("notifications:read", account_id)
    require_account(ctx, account_id)
    items = [{**n, "deliveries": [_public(d) for d in n["deliveries"]]}
             for n in history(ctx.sessions, account_id, NEWEST)]
    return paginate(items, limit, starting_after)


@router.post("/accounts/{account_id}/notifications/{notification_id}/deliveries/{delivery_id}/redeliver",
             response_model=DeliveryView, summary="Send a delivery again", openapi_extra=needs("notifications:write"))
def redeliver_one(account_id: AccountId, notification_id: NotificationId, delivery_id: DeliveryId, ctx: Ctx,
                  caller: AuthCaller) -> dict[str, Any]:
    """Puts the delivery back to `pending`, due now, with a fresh retry schedule (attempts from 0); the worker
    sends it within a minute, to the account's current address or webhook URL (with the current secret).
    A delivered one is sent once more (receivers dedupe by `X-AIHub-Notification-Id`). 404 delivery_not_found;
    409 delivery_in_progress (being sent right now), channel_off (no billing email, or the webhook is off)."""
    caller.require("notifications:write", account_id)
    return _public(redeliver(ctx.sessions, account_id, notification_id, delivery_id, ctx.now()))
