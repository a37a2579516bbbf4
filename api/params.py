"""Shared request parts of the management API's routes: path parameters, the context and the caller."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ConfigDict, model_validator

from api.auth import Caller, current_caller
from api.context import ApiContext

AccountId = Annotated[str, Path(pattern=r"^[a-z0-9]{4,32}$", description="The account's id.")]
AuthCaller = Annotated[Caller, Depends(current_caller)]


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(ctx_of)]


def _no_control_characters(value: Any, path: str = "") -> None:
    if isinstance(value, str):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"{path or 'a text'} holds a control character (tab, newline, NUL, ...)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_control_characters(key, path)
            _no_control_characters(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for item in value:
            _no_control_characters(item, path)


class Strict(BaseModel):
    """Base of every request body: unknown fields are refused (400 `unknown_field`), and so is any text holding a
    control character (400 `invalid_value`): none of the API's fields is multi-line, and NUL cannot be stored."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _printable(cls, data: Any) -> Any:
        _no_control_characters(data)
        return data


def needs(permission: str) -> dict[str, str]:
    """A route's `openapi_extra`: the permission it checks (api/permissions.py), shown in the OpenAPI document as
    `x-permission` and used by the tests that try every route with every role."""
    return {"x-permission": permission}
