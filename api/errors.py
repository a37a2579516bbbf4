"""The management API's one error shape, the same as the gateway's and OpenAI's:
`{"error": {"message": str, "type": str, "param": str | null, "code": str}}`, with a stable `code` per cause.

Domain errors (billing.errors.BillingError) keep their status and code; request validation is 400 with
`unknown_field`, `invalid_type`, `out_of_range`, `missing_field` or `invalid_value` and the field's dotted path in
`param`; an unknown route is 404 `unknown_url`; a wrong method 405 `method_not_allowed`; anything unexpected 500
`internal_error` with no details (logged with the request id).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from billing.errors import BillingError

log = logging.getLogger("aihub.api")


class ApiError(Exception):
    """Raised by handlers: status, stable code, message and the offending parameter if any."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorBody


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


_VALIDATION_CODES = {"extra_forbidden": "unknown_field", "missing": "missing_field", "json_invalid": "invalid_json",
                     "greater_than": "out_of_range", "greater_than_equal": "out_of_range",
                     "less_than": "out_of_range", "less_than_equal": "out_of_range", "too_long": "out_of_range",
                     "too_short": "out_of_range", "string_too_long": "out_of_range",
                     "string_too_short": "out_of_range", "literal_error": "invalid_value", "enum": "invalid_value",
                     "string_pattern_mismatch": "invalid_value", "model_attributes_type": "invalid_type",
                     "dict_type": "invalid_type"}


def _validation_error(exc: RequestValidationError) -> tuple[str, str, str | None]:
    errors: list[dict[str, Any]] = list(exc.errors())
    if not errors:
        return "invalid_request", "The request is not valid.", None
    first = errors[0]
    kind = str(first.get("type", ""))
    code = _VALIDATION_CODES.get(kind, "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    if code == "unknown_field":
        message = f"Unknown field {param!r}."
    elif code == "invalid_json":
        message, param = "The body is not valid JSON.", None
    elif param:
        message = f"{param}: {message}."
    more = len(errors) - 1
    if more:
        message += f" ({more} more problem{'s' if more > 1 else ''})"
    return code, message, param


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)


async def _on_billing_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BillingError)
    return error_response(exc.status, exc.code, exc.message)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    code, message, param = _validation_error(exc)
    return error_response(400, code, message, param)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "unknown_url", f"No API resource at {request.url.path}.")
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):     # FastAPI: not UTF-8, not JSON
        return error_response(400, "invalid_json", "The body is not valid JSON (UTF-8).")
    if exc.status_code == 413:
        return error_response(413, "request_too_large", str(exc.detail))
    if exc.status_code == 405:
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}.",
                              headers=dict(exc.headers or {}))
    return error_response(exc.status_code, "invalid_request", str(exc.detail))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("management API error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "The server could not answer; the error was logged.")


HANDLERS = {ApiError: _on_api_error, BillingError: _on_billing_error, RequestValidationError: _on_validation,
            HTTPException: _on_http, Exception: _on_unexpected}
