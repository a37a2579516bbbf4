"""Invoices of an account: the list (newest period first), one invoice with its lines, tax, balance, payment
attempts and credit notes, its PDF, paying it now (the account's default payment method) and, for the operator,
voiding it. Money is integer minor units of the invoice's `currency`. An invoice of another account is 404
`invoice_not_found`, as one that does not exist."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from api.errors import ApiError
from api.idempotency import idempotent
from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, needs
from api.routes._common import UNAVAILABLE, InvoiceNumber, invoice_of
from api.routes.payments import PaymentView
from billing.pdf import render_invoice_pdf

router = APIRouter(tags=["invoices"])


class InvoiceSummary(BaseModel):
    """One invoice in the list (amounts in minor units of `currency`)."""

    number: str
    period: str                    # YYYY-MM, the UTC month billed
    status: str                    # draft | open | paid | void | uncollectible
    currency: str
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    issued_at: str
    due_at: str
    paid_at: str | None


class LineView(BaseModel):
    kind: str                      # subscription | overage | boost
    description: str
    quantity: str                  # decimal text: days as "19/30", calls, 1
    unit_amount_minor: int
    amount_minor: int


class TaxView(BaseModel):
    rate: str                      # percent as a decimal string, "19" = 19 %
    jurisdiction: str
    reverse_charge: bool
    note: str | None
    amount_minor: int


class PartyView(BaseModel):
    name: str
    address: str
    country: str
    tax_id: str


class CustomerView(BaseModel):
    id: str
    name: str
    billing_email: str | None
    country: str
    region: str
    tax_id: str | None


class BalanceView(BaseModel):
    """What the invoice comes to: total - credited - (paid - refunded), never below 0."""

    total_minor: int
    credited_minor: int
    paid_minor: int
    refunded_minor: int
    due_minor: int


class CreditNoteView(BaseModel):
    number: str                    # CN-2026-000001
    amount_minor: int
    currency: str
    reason: str
    created_at: str


class InvoiceView(BaseModel):
    """One invoice: the lines, the tax, the customer's details as issued, usage summary (calls, tokens, list
    cost by model), its balance, every payment attempt and its credit notes."""

    number: str
    account: str
    period: str
    status: str
    currency: str
    language: str
    issued_at: str
    due_at: str
    paid_at: str | None
    seller: PartyView
    customer: CustomerView
    lines: list[LineView]
    subtotal_minor: int
    tax: TaxView
    total_minor: int
    usage: dict[str, Any]
    balance: BalanceView
    payments: list[PaymentView]
    credit_notes: list[CreditNoteView]


class PdfResponse(Response):
    media_type = "application/pdf"


def _summary(invoice: dict[str, Any]) -> dict[str, Any]:
    return {**{k: invoice[k] for k in InvoiceSummary.model_fields if k != "tax_minor"},
            "tax_minor": invoice["tax"]["amount_minor"]}


@router.get("/accounts/{account_id}/invoices", response_model=Page[InvoiceSummary], summary="Invoices",
            openapi_extra=needs("invoices:read"))
def list_invoices(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
                  starting_after: Cursor = None) -> dict[str, object]:
    """The account's invoices, newest period first; the cursor is an invoice number. 404 account_not_found."""
    caller.require("invoices:read", account_id)
    return paginate([_summary(i) for i in ctx.invoicer.history(account_id)], limit, starting_after, key="number")


@router.get("/accounts/{account_id}/invoices/{number}", response_model=InvoiceView, summary="One invoice",
            openapi_extra=needs("invoices:read"))
def get_invoice(account_id: AccountId, number: InvoiceNumber, ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    """The invoice with its lines, tax, balance, payment attempts (oldest first) and credit notes.
    404 invoice_not_found."""
    caller.require("invoices:read", account_id)
    invoice = invoice_of(ctx, account_id, number)
    return {**invoice, "balance": ctx.payments.balance(number), "payments": ctx.payments.attempts(number),
            "credit_notes": ctx.payments.credit_notes(number)}


@router.get("/accounts/{account_id}/invoices/{number}/pdf", response_class=PdfResponse, summary="The invoice's PDF",
            responses={200: {"description": "The invoice as PDF, in the account's language",
                             "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}}},
            openapi_extra=needs("invoices:read"))
def invoice_pdf(account_id: AccountId, number: InvoiceNumber, ctx: Ctx, caller: AuthCaller) -> Response:
    """`application/pdf`, laid out by the operator's templates in the invoice's language (billing/pdf.py),
    as an attachment named `<number>.pdf`. 404 invoice_not_found."""
    caller.require("invoices:read", account_id)
    invoice = invoice_of(ctx, account_id, number)
    pdf = render_invoice_pdf(invoice, str(invoice["language"]))
    return PdfResponse(pdf, headers={"Content-Disposition": f'attachment; filename="{number}.pdf"'})


@router.post("/accounts/{account_id}/invoices/{number}/pay", response_model=PaymentView, summary="Pay now",
             responses=UNAVAILABLE, openapi_extra=needs("invoices:pay"))
def pay_invoice(account_id: AccountId, number: InvoiceNumber, request: Request, ctx: Ctx,
                caller: AuthCaller) -> object:
    """Charges the open (or uncollectible) invoice with the account's default payment method and returns the
    payment: `state` succeeded, failed (`failure_code`, e.g. card_declined: pay again after changing the
    method), requires_action or processing. At most one charge: while a payment is under way or has succeeded,
    that payment is returned and nothing is charged. Takes an Idempotency-Key. 409 invoice_not_payable,
    payment_method_required, awaiting_bank_transfer (paid by transfer), payment_in_progress; 503
    payment_provider_unavailable (outcome unknown until the provider answers: do not retry with another key)."""
    caller.require("invoices:pay", account_id)
    invoice_of(ctx, account_id, number)

    def run() -> dict[str, Any]:
        return PaymentView.model_validate(ctx.payments.charge_invoice(number)).model_dump(mode="json")
    return idempotent(request, caller, None, run)


@router.post("/accounts/{account_id}/invoices/{number}/void", response_model=InvoiceView,
             summary="Void an invoice (operator)", openapi_extra=needs("operator"))
def void_invoice(account_id: AccountId, number: InvoiceNumber, ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    """Voids a draft, open or uncollectible invoice (the debt is cancelled; a dunning restriction it caused is
    lifted at once). Voiding a void invoice changes nothing. 409 invalid_transition (a paid invoice: refund it
    instead), payment_in_progress (a payment is under way)."""
    caller.require("operator", account_id)
    invoice_of(ctx, account_id, number)
    live = ctx.payments.payment_for(number)
    if live is not None and live["state"] in ("processing", "requires_action"):
        raise ApiError(409, "payment_in_progress", f"Invoice {number} has a payment under way; it cannot be voided "
                       "until the payment settles.")
    before = ctx.invoicer.get(number)["status"]
    ctx.invoicer.set_status(number, "void", at=ctx.now(), actor=caller.actor)
    if before != "void":
        for hook in ctx.payments.on_paid:      # billing.dunning.Dunner.settled: paid or voided, restore at once
            hook(number)
    return get_invoice(account_id, number, ctx, caller)
