"""An account's billing settings: billing email, invoice language, tax id, country and region, pay-as-you-go
overage, quota warning levels and the webhook URL. Changes apply to what is issued or sent from then on (an
issued invoice keeps the details it was issued with). The webhook's signing secret is in the answer that sets the
URL, once: it is never shown again."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.context import ApiContext
from api.idempotency import idempotent
from api.params import AccountId, AuthCaller, Ctx, Strict, needs
from billing.accounts import check_billing_email, check_location, check_tax_id, check_warning_levels
from billing.notifications import public_target

router = APIRouter(tags=["settings"])
Level = Annotated[int, Field(strict=True, ge=1, le=100)]


class SettingsView(BaseModel):
    account: str
    billing_email: str | None      # invoices and notification emails
    language: str                  # en | zh: invoices and emails
    tax_id: str | None
    country: str                   # ISO 3166-1 alpha-2
    region: str                    # e.g. CA; "" when none
    currency: str                  # fixed when the account was created
    overage: bool                  # pay-as-you-go overage on (plans that offer it)
    warning_levels: list[int]      # quota warnings at these percentages (80 and/or 100)
    webhook_url: str | None        # without its query string (shown as ?...); null: no webhook


class SettingsChange(Strict):
    """Any of the settings; a field left out is unchanged, `null` clears billing_email or tax_id. A new country
    without a region clears the region."""

    billing_email: Annotated[str | None, Field(max_length=320)] = None
    language: Literal["en", "zh"] | None = None
    tax_id: Annotated[str | None, Field(max_length=64)] = None
    country: Annotated[str | None, Field(pattern=r"^[A-Za-z]{2}$")] = None
    region: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9]{0,3}$")] = None
    overage: Annotated[bool | None, Field(strict=True)] = None
    warning_levels: Annotated[list[Level] | None, Field(max_length=100)] = None


class WebhookChange(Strict):
    url: Annotated[str | None, Field(max_length=2000, description="An http(s) URL, or null to turn the webhook "
                                                                  "off.")]


class WebhookSet(BaseModel):
    webhook_url: str | None
    webhook_secret: str | None     # whsec_...: shown once (null when turned off or replayed)


def settings_of(ctx: ApiContext, account_id: str) -> dict[str, Any]:
    account = ctx.accounts.get_account(account_id)
    notifications = ctx.accounts.notification_settings(account_id)
    return {"account": account_id, **{k: account[k] for k in ("billing_email", "language", "tax_id", "country",
                                                               "region", "currency")},
            "overage": account["subscription"]["overage_enabled"],
            "warning_levels": notifications["warning_levels"],
            "webhook_url": public_target(notifications["webhook_url"])}


@router.get("/accounts/{account_id}/settings", response_model=SettingsView, summary="Billing settings",
            openapi_extra=needs("account:read"))
def get_settings(account_id: AccountId, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """The account's billing and notification settings (never the webhook's secret). 404 account_not_found."""
    caller.require("account:read", account_id)
    return settings_of(ctx, account_id)


def _change(account_id: str, body: SettingsChange, ctx: ApiContext, actor: str) -> dict[str, Any]:
    given = body.model_fields_set
    current = ctx.accounts.get_account(account_id)
    # Every value is checked before anything changes, so a refused field leaves the settings as they were.
    if body.billing_email is not None:
        check_billing_email(body.billing_email)
    if body.tax_id is not None:
        check_tax_id(body.tax_id)
    location = None
    if body.country is not None or body.region is not None:
        country = (body.country or current["country"]).upper()
        kept = current["region"] if country == current["country"] else ""     # a region is its country's
        location = check_location(country, kept if body.region is None else body.region)
    levels = None if body.warning_levels is None else check_warning_levels(body.warning_levels)
    accounts = ctx.accounts
    if body.overage is not None:          # first: the one a plan may refuse (overage_not_allowed)
        accounts.set_overage(account_id, body.overage, actor=actor)
    if "billing_email" in given:
        accounts.set_billing_email(account_id, body.billing_email, actor=actor)
    if "tax_id" in given:
        accounts.set_tax_id(account_id, body.tax_id, actor=actor)
    if location is not None:
        accounts.set_location(account_id, *location, actor=actor)
    if body.language is not None:
        accounts.set_language(account_id, body.language, actor=actor)
    if levels is not None:
        accounts.set_warning_levels(account_id, levels, actor=actor)
    return settings_of(ctx, account_id)


@router.patch("/accounts/{account_id}/settings", response_model=SettingsView, summary="Change settings",
              openapi_extra=needs("settings:write"))
def patch_settings(account_id: AccountId, body: SettingsChange, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """Changes the fields given and returns all settings. `warning_levels` is a subset of [80, 100] (the levels
    the gateway reports). `null` for language, country, region, overage or warning_levels means unchanged.
    400 bad_email, bad_tax_id, bad_country, bad_warning_levels, overage_not_allowed (the plan has no
    pay-as-you-go overage), or a validation code with `param`; nothing is changed then."""
    caller.require("settings:write", account_id)
    return _change(account_id, body, ctx, caller.actor)


@router.post("/accounts/{account_id}/settings", response_model=SettingsView, summary="Change settings (POST)",
             openapi_extra=needs("settings:write"))
def post_settings(account_id: AccountId, body: SettingsChange, ctx: Ctx, caller: AuthCaller) -> dict[str, Any]:
    """The same as PATCH, for clients that cannot send PATCH."""
    caller.require("settings:write", account_id)
    return _change(account_id, body, ctx, caller.actor)


@router.post("/accounts/{account_id}/settings/webhook", response_model=WebhookSet, summary="Set the webhook URL",
             openapi_extra=needs("settings:write"))
def set_webhook(account_id: AccountId, body: WebhookChange, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    """Sets the webhook URL (public http or https, no credentials) with a new signing secret, in this answer
    once (`webhook_secret`, whsec_...: verify `X-AIHub-Signature` with it; it is never shown again, and an
    Idempotency-Key replay has null); `{"url": null}` turns the webhook off. Setting it again rotates the secret.
    400 bad_webhook_url."""
    caller.require("settings:write", account_id)

    def run() -> dict[str, Any]:
        secret = ctx.accounts.set_webhook(account_id, body.url, actor=caller.actor)
        return {"webhook_url": public_target(body.url), "webhook_secret": secret}
    return idempotent(request, caller, body, run)
