"""Payment methods and payments of an account: list, add (a provider's payment method id, or bank transfer),
start a Stripe SetupIntent for the browser, remove; the payment history with refunds and credit notes; and, for
the operator, refunds. Card numbers never reach this API (the provider's ids, brand and last 4 digits only), nor
do provider customer ids or secrets (a SetupIntent's client_secret is in its answer once). Money is integer
minor units with its currency."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from api.errors import ApiError
from api.idempotency import idempotent
from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, Strict, needs
from api.routes._common import DECLINED, UNAVAILABLE, InvoiceNumber, invoice_of, require_account

router = APIRouter(tags=["payments"])
MAX_ID = 2**31 - 1
MethodId = Annotated[int, Path(ge=1, le=MAX_ID, description="The payment method's id.")]


class MethodView(BaseModel):
    """A payment method on file: what it shows, never a number."""

    id: int
    provider: str                  # stripe | paypal | bank_transfer
    brand: str | None              # e.g. visa
    last4: str | None
    default: bool                  # the one invoices are charged to
    created_at: str


class NewMethod(Strict):
    provider: Literal["stripe", "paypal", "bank_transfer"]
    payment_method: Annotated[str | None, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
                                                description="The provider's id (Stripe: pm_...); none for "
                                                            "bank_transfer.")] = None
    make_default: bool = True


class NewSetupIntent(Strict):
    provider: Literal["stripe"] = "stripe"


class SetupIntentView(BaseModel):
    provider: str
    setup_intent: str              # seti_...
    client_secret: str | None      # for Stripe.js, shown once (null when an Idempotency-Key replays the answer)


class PaymentView(BaseModel):
    """One attempt to collect an invoice. state: pending (bank transfer awaited), processing, requires_action,
    succeeded, failed, partially_refunded, refunded."""

    id: int
    invoice: str
    provider: str
    attempt: int
    amount_minor: int
    refunded_minor: int
    currency: str
    state: str
    provider_payment_id: str | None     # the PaymentIntent id, or the bank transfer's reference
    failure_code: str | None
    failure_message: str | None
    action_required: bool              # the customer must authenticate or approve it (3-D Secure, PayPal)
    action_url: str | None             # where, when known
    created_at: str
    updated_at: str


class RefundView(BaseModel):
    """A refund of a payment: pending, succeeded (with its credit note) or failed."""

    id: int
    invoice: str
    amount_minor: int
    currency: str
    state: str
    credit_note: str | None        # CN-2026-000001
    reason: str | None             # the credit note's
    failure_message: str | None
    created_at: str


class PaymentEntry(PaymentView):
    refunds: list[RefundView]


class NewRefund(Strict):
    amount_minor: Annotated[int, Field(strict=True, gt=0, le=10**12, description="Minor units of the invoice's "
                                                                              "currency.")]
    reason: Annotated[str, Field(max_length=300)] = ""


class RefundDone(BaseModel):
    invoice: str
    amount_minor: int
    state: str
    credit_note: str | None
    failure_message: str | None
    payment: PaymentView | None    # the payment after the refund (refunded_minor, state)


def _method(view: dict[str, Any]) -> dict[str, Any]:
    return MethodView.model_validate(view).model_dump(mode="json")


@router.get("/accounts/{account_id}/payment-methods", response_model=Page[MethodView], summary="Payment methods",
            openapi_extra=needs("payments:read"))
def list_methods(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                 starting_after: Cursor = None) -> dict[str, object]:
    """The account's payment methods, oldest first; `default` marks the one invoices are charged to."""
    caller.require("payments:read", account_id)
    require_account(ctx, account_id)
    return paginate(ctx.payments.payment_methods(account_id), limit, starting_after)


@router.post("/accounts/{account_id}/payment-methods", response_model=MethodView, status_code=201,
             summary="Add a payment method", responses={**DECLINED, **UNAVAILABLE},
             openapi_extra=needs("payments:write"))
def add_method(account_id: AccountId, body: NewMethod, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    """Adds `{"provider": "stripe", "payment_method": "pm_..."}` (a method collected by Stripe.js, e.g. with a
    SetupIntent: attached to the account's Stripe customer) or `{"provider": "bank_transfer"}`; it becomes the
    default unless `make_default` is false (the first one always does). Takes an Idempotency-Key.
    400 missing_field (payment_method), bad_payment_method; 402 card_declined (or the card's decline code);
    409 provider_not_configured, payment_method_in_use (another account's); 503 payment_provider_unavailable."""
    caller.require("payments:write", account_id)
    if body.provider == "bank_transfer" and caller.kind != "operator":
        raise ApiError(403, "forbidden", "Paying by bank transfer is agreed with the operator, who enables it; add a "
                       "card or a PayPal method here.", param="provider")
    if body.provider != "bank_transfer" and body.payment_method is None:
        raise ApiError(400, "missing_field", f"A {body.provider} payment method needs `payment_method` (the "
                       "provider's id).", param="payment_method")
    require_account(ctx, account_id)

    def run() -> dict[str, Any]:
        return _method(ctx.payments.add_payment_method(account_id, body.payment_method or "", provider=body.provider,
                                                       make_default=body.make_default, actor=caller.actor))
    return idempotent(request, caller, body, run, status=201)


@router.post("/accounts/{account_id}/payment-methods/setup-intent", response_model=SetupIntentView,
             status_code=201, summary="Start adding a card in the browser (Stripe SetupIntent)",
             responses=UNAVAILABLE, openapi_extra=needs("payments:write"))
def setup_intent(account_id: AccountId, request: Request, ctx: Ctx, caller: AuthCaller,
                 body: NewSetupIntent | None = None) -> object:
    """A Stripe SetupIntent of the account's customer: give `client_secret` (shown once) to Stripe.js
    (`confirmCardSetup`), then add the resulting `pm_...` with `POST .../payment-methods`. Takes an
    Idempotency-Key. 409 provider_not_configured, setup_not_supported; 503 payment_provider_unavailable."""
    caller.require("payments:write", account_id)
    require_account(ctx, account_id)
    provider = (body or NewSetupIntent()).provider

    def run() -> dict[str, Any]:
        return SetupIntentView.model_validate(ctx.payments.setup_intent(account_id, provider)).model_dump()
    return idempotent(request, caller, body, run, status=201)


@router.delete("/accounts/{account_id}/payment-methods/{method_id}", response_model=MethodView,
               summary="Remove a payment method", openapi_extra=needs("payments:write"))
def remove_method(account_id: AccountId, method_id: MethodId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """Removes the method (returned as it was); when it was the default, the newest remaining one becomes the
    default. 404 payment_method_not_found; 409 last_payment_method (the only method of an account on a paid plan:
    add another first)."""
    caller.require("payments:write", account_id)
    return _method(ctx.payments.remove_payment_method(account_id, method_id, actor=caller.actor))


@router.get("/accounts/{account_id}/payments", response_model=Page[PaymentEntry], summary="Payment history",
            openapi_extra=needs("payments:read"))
def list_payments(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                  starting_after: Cursor = None) -> dict[str, object]:
    """Every payment attempt of the account, newest first, each with its refunds (and their credit notes); the
    cursor is a payment id."""
    caller.require("payments:read", account_id)
    require_account(ctx, account_id)
    refunds: dict[int, list[dict[str, Any]]] = {}
    for refund in ctx.payments.refunds(account_id):
        refunds.setdefault(refund["payment"], []).append(refund)
    entries = [{**p, "refunds": refunds.get(p["id"], [])} for p in ctx.payments.history(account_id)]
    return paginate(entries, limit, starting_after)


@router.post("/accounts/{account_id}/invoices/{number}/refunds", response_model=RefundDone, status_code=201,
             summary="Refund an invoice (operator)", responses=UNAVAILABLE, openapi_extra=needs("operator"))
def refund_invoice(account_id: AccountId, number: InvoiceNumber, body: NewRefund, request: Request, ctx: Ctx,
                   caller: AuthCaller) -> object:
    """Refunds `amount_minor` of what was paid for the invoice (part or all) through the payment's provider and
    issues a credit note. Takes an Idempotency-Key (send one: a retry without it is a second refund).
    400 refund_exceeds_payment (more than is still refundable); 404 invoice_not_found; 409 nothing_to_refund,
    refund_in_progress, refund_failed (the provider refused); 503 payment_provider_unavailable."""
    caller.require("operator", account_id)
    invoice_of(ctx, account_id, number)

    def run() -> dict[str, Any]:
        done = ctx.payments.refund(number, body.amount_minor, reason=body.reason, actor=caller.actor)
        return RefundDone.model_validate(done).model_dump(mode="json")
    return idempotent(request, caller, body, run, status=201)
