"""API keys of an account: list (never the key itself), create (the key is in the answer once), revoke. A developer
may revoke only the keys it created; owners and admins any."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from api.errors import ApiError
from api.idempotency import idempotent
from api.pagination import Cursor, Limit, Page, paginate
from api.params import AccountId, AuthCaller, Ctx, Strict, needs

router = APIRouter(tags=["keys"])
KeyId = Annotated[str, Path(pattern=r"^[a-z0-9]{4,32}$")]


class KeyView(BaseModel):
    id: str
    name: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    status: str
    created_by: str | None


class NewKey(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)] = "default"


class CreatedKey(BaseModel):
    key: KeyView
    api_key: str | None        # shown once (null when an Idempotency-Key replays the answer)


@router.get("/accounts/{account_id}/keys", response_model=Page[KeyView], summary="API keys",
             openapi_extra=needs("keys:read"))
def list_keys(account_id: AccountId, ctx: Ctx, caller: AuthCaller, limit: Limit = 20,
              starting_after: Cursor = None) -> dict[str, object]:
    caller.require("keys:read", account_id)
    return paginate(ctx.accounts.list_keys(account_id), limit, starting_after)


@router.post("/accounts/{account_id}/keys", response_model=CreatedKey, status_code=201, summary="Create a key",
             openapi_extra=needs("keys:write"))
def create_key(account_id: AccountId, body: NewKey, request: Request, ctx: Ctx, caller: AuthCaller) -> object:
    caller.require("keys:write", account_id)

    def run() -> dict[str, object]:
        issued, _ = ctx.accounts.issue_key(account_id, body.name, actor=caller.actor,
                                           created_by=caller.id if caller.kind == "member" else None)
        view = next(k for k in ctx.accounts.list_keys(account_id) if k["id"] == issued.key_id)
        return {"key": view, "api_key": issued.api_key}
    return idempotent(request, caller, body, run, status=201)


@router.post("/accounts/{account_id}/keys/{key_id}/revoke", response_model=KeyView, summary="Revoke a key",
             openapi_extra=needs("keys:write"))
def revoke_key(account_id: AccountId, key_id: KeyId, ctx: Ctx, caller: AuthCaller) -> dict[str, object]:
    caller.require("keys:write", account_id)
    keys = {k["id"]: k for k in ctx.accounts.list_keys(account_id)}
    if key_id not in keys:
        raise ApiError(404, "key_not_found", f"No key {key_id!r} on account {account_id!r}.")
    if caller.role == "developer" and keys[key_id]["created_by"] != caller.id:
        raise ApiError(403, "forbidden", "A developer may revoke only the keys it created.")
    ctx.accounts.revoke_key(account_id, key_id, actor=caller.actor)
    return next(k for k in ctx.accounts.list_keys(account_id) if k["id"] == key_id)
