"""Shared request parts of the management API's routes: path parameters, the context and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ConfigDict

from api.auth import Caller, current_caller
from api.context import ApiContext

AccountId = Annotated[str, Path(pattern=r"^[a-z0-9]{4,32}$", description="The account's id.")]
AuthCaller = Annotated[Caller, Depends(current_caller)]


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(ctx_of)]


class Strict(BaseModel):
    """Base of every request body: unknown fields are refused (400 `unknown_field`)."""

    model_config = ConfigDict(extra="forbid")


def needs(permission: str) -> dict[str, str]:
    """A route's `openapi_extra`: the permission it checks (api/permissions.py), shown in the OpenAPI document as
    `x-permission` and used by the tests that try every route with every role."""
    return {"x-permission": permission}
