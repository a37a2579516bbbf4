"""What several resource modules share: the invoice number path parameter, the checks that an invoice is the
account's and that an account exists, and extra documented error statuses. Not a resource module (the leading
underscore keeps it out of route discovery)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from api.context import ApiContext
from api.errors import ApiError, ErrorResponse

InvoiceNumber = Annotated[str, Path(pattern=r"^[A-Z]{1,8}-[0-9]{4}-[0-9]{1,12}$",
                                    description="The invoice number, e.g. AH-2026-000123.")]

# Error statuses beyond the ones every route documents (api/app.py ERROR_STATUSES), for a route's `responses`.
DECLINED: dict[int | str, dict[str, Any]] = {
    402: {"model": ErrorResponse, "description": "The provider declined the payment method (`code`: its reason)"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "The payment provider (or usage history) could not be reached"}}


def invoice_of(ctx: ApiContext, account_id: str, number: str) -> dict[str, Any]:
    """The invoice (billing.invoicing.Invoicer.view) if it is the account's; 404 invoice_not_found otherwise,
    another account's invoice included."""
    invoice = ctx.invoicer.get(number)
    if invoice["account"] != account_id:
        raise ApiError(404, "invoice_not_found", f"No invoice {number!r} on account {account_id!r}.")
    return invoice


def require_account(ctx: ApiContext, account_id: str) -> None:
    """404 account_not_found unless the account exists (for listings that would be empty otherwise)."""
    if not ctx.accounts.exists(account_id):
        raise ApiError(404, "account_not_found", f"No account {account_id!r}.")
