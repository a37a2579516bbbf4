"""The management API's front door, a plain ASGI middleware in front of FastAPI:

- the caller is authenticated before a byte of the body is read (401 for a missing or unknown token, whatever was
  sent), except on the public paths (the OpenAPI document, the docs page, accepting an invitation);
- a body is at most MAX_BODY_BYTES (1 MiB): 413 `request_too_large` from Content-Length at once, or as soon as a
  chunked body passes it;
- every answer carries `Cache-Control: no-store` (answers hold account data, and some a secret shown once).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import authenticate, bearer_token
from api.errors import ApiError, error_response

MAX_BODY_BYTES = 1 << 20
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs", "/v1/invites/accept"})


class TooLarge(HTTPException):
    """Raised from inside the body read (FastAPI passes HTTPExceptions through); api/errors.py answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"A request body is at most {limit} bytes.")


class ApiGuard:
    def __init__(self, app: ASGIApp, ctx: Any, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.ctx = ctx
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-store")]
            await send(message)

        length = headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._refuse(scope, receive, send_no_store, ApiError(
                413, "request_too_large", f"A request body is at most {self.max_body_bytes} bytes."))
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        local = path[len(root):] if root and path.startswith(root) else path
        if local not in PUBLIC_PATHS and not local.startswith("/docs-static/"):
            try:
                scope.setdefault("state", {})["caller"] = await run_in_threadpool(
                    authenticate, self.ctx, bearer_token(headers.get("authorization", "")))
            except ApiError as exc:
                await self._refuse(scope, receive, send_no_store, exc)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise TooLarge(self.max_body_bytes)
            return message

        await self.app(scope, limited_receive, send_no_store)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ApiError) -> None:
        response = error_response(exc.status, exc.code, exc.message, exc.param, exc.headers or None)
        await response(scope, receive, send)

