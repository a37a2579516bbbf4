"""Accounts: `GET /api/v1/accounts/{id}` (its members and the operator), and for the operator the list of all
accounts and `POST /api/v1/accounts` (creates the account and, with `owner_email`, its owner, whose member token is
in the answer once)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.idempotency import idempotent
from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, Strict, needs
from billing.members import check_email

router = APIRouter(tags=["accounts"])


class SubscriptionView(BaseModel):
    plan: str
    since: str
    custom_quota: int | None
    overage_enabled: bool
    restricted: bool
    scheduled_plan: str | None
    scheduled_at: str | None


class BoostView(BaseModel):
    id: str
    calls: int
    until: str
    price_minor: int | None
    currency: str | None


class AccountView(BaseModel):
    id: str
    name: str
    billing_email: str | None
    country: str
    region: str
    tax_id: str | None
    currency: str
    language: str
    status: str
    created_at: str
    version: int
    subscription: SubscriptionView
    boosts: list[BoostView]


class NewAccount(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    plan: Annotated[str, Field(min_length=1, max_length=32)]
    id: Annotated[str | None, Field(pattern=r"^[a-z0-9]{4,32}$")] = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] = "US"
    region: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{0,3}$")] = ""
    billing_email: Annotated[str | None, Field(max_length=320)] = None
    tax_id: Annotated[str | None, Field(max_length=64)] = None
    currency: Annotated[str | None, Field(pattern=r"^[A-Za-z]{3}$")] = None
    language: Literal["en", "zh"] = "en"
    owner_email: Annotated[str | None, Field(max_length=320)] = None
    bank_transfer: bool = False       # the account pays by bank transfer (a paid plan needs a payment method)


class CreatedAccount(BaseModel):
    account: AccountView
    owner: dict[str, str] | None
    owner_token: str | None      # shown once


@router.get("/accounts", response_model=Page[AccountView], summary="All accounts (operator)",
             openapi_extra=needs("operator"))
def list_accounts(ctx: Ctx, caller: AuthCaller, limit: Limit = 20, starting_after: Cursor = None) -> dict[str, object]:
    caller.require("operator")
    return paginate(ctx.accounts.list_accounts(), limit, starting_after)


@router.post("/accounts", response_model=CreatedAccount, status_code=201, summary="Create an account (operator)",
             openapi_extra=needs("operator"))
def create_account(body: NewAccount, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    caller.require("operator")

    if body.owner_email is not None:
        check_email(body.owner_email)      # before anything is created

    def run() -> dict[str, object]:
        change = ctx.accounts.create_account(body.name, body.plan, account_id=body.id, country=body.country,
                                             region=body.region, billing_email=body.billing_email,
                                             tax_id=body.tax_id, currency=body.currency, language=body.language,
                                             bank_transfer=body.bank_transfer, actor=caller.actor)
        owner = None
        if body.owner_email:
            owner = ctx.members.add_member(change.account["id"], body.owner_email, "owner", actor=caller.actor)
        return {"account": ctx.accounts.get_account(change.account["id"]),
                "owner": owner.member if owner else None, "owner_token": owner.token if owner else None}
    return idempotent(request, caller, body, run, status=201)


@router.get("/accounts/{account_id}", response_model=AccountView, summary="One account",
             openapi_extra=needs("account:read"))
def get_account(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    caller.require("account:read", account_id)
    return ctx.accounts.get_account(account_id)
