"""`Idempotency-Key` on every POST that creates something or moves money (Stripe's semantics).

The first request with a key runs and its answer (2xx or 4xx) is kept for 24 hours under (caller, key); a retry
with the same key and the same request gets the same status and body with `Idempotent-Replayed: true`, and nothing
runs again. The same key with another method, path or body is 409 `idempotency_key_reused`; a retry while the first
is still running is 409 `idempotency_key_in_use`. A 5xx or an unexpected error is not kept (the retry runs). A
secret shown once (an API key, a token, a webhook secret) is never stored: a replay has `null` in its place.
Keys are 1 to 255 printable characters (400 `invalid_idempotency_key`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from api.auth import Caller
from api.context import ApiContext
from api.errors import ApiError, error_type
from billing.db.models import IdempotencyRecord
from billing.errors import BillingError
from billing.times import aware

TTL = timedelta(hours=24)
IN_PROGRESS = 0
SECRET_FIELDS = frozenset({"api_key", "token", "secret", "webhook_secret", "client_secret", "owner_token"})


def _secret(name: str, names: frozenset[str]) -> bool:
    return name in names or name.endswith(("_token", "_secret", "api_key"))


def _redact(value: Any, fields: Iterable[str]) -> Any:
    names = frozenset(fields)
    if isinstance(value, dict):
        return {k: (None if _secret(k, names) else _redact(v, names)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, names) for v in value]
    return value


def _fingerprint(request: Request, payload: BaseModel | None) -> str:
    body = orjson.dumps(payload.model_dump(mode="json") if payload is not None else None,
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(request.method.encode() + b" " + request.url.path.encode() + b"\n" + body).hexdigest()


def _claim(ctx: ApiContext, caller: Caller, key: str, fingerprint: str) -> IdempotencyRecord | None:
    """None: claimed for this request; else the record of the earlier request with this key."""
    now = ctx.now()
    for _ in range(2):
        try:
            with ctx.sessions.begin() as session:
                session.add(IdempotencyRecord(caller=caller.id, key=key, request_sha256=fingerprint,
                                              status=IN_PROGRESS, body={}, created_at=now))
            return None
        except IntegrityError:
            with ctx.sessions.begin() as session:
                record: IdempotencyRecord | None = session.get(IdempotencyRecord, (caller.id, key))
                if record is None:
                    continue
                if aware(record.created_at) + TTL <= now:      # expired: the key may be used anew
                    session.delete(record)
                    continue
                session.expunge(record)
                return record
    raise ApiError(409, "idempotency_key_in_use", "This Idempotency-Key is being used by another request.")


def _store(ctx: ApiContext, caller: Caller, key: str, status: int, body: dict[str, Any]) -> None:
    with ctx.sessions.begin() as session:
        record = session.get(IdempotencyRecord, (caller.id, key))
        if record is not None:
            record.status, record.body = status, _redact(body, SECRET_FIELDS)


def _forget(ctx: ApiContext, caller: Caller, key: str) -> None:
    with ctx.sessions.begin() as session:
        record = session.get(IdempotencyRecord, (caller.id, key))
        if record is not None:
            session.delete(record)


def _error(status: int, code: str, message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def idempotent(request: Request, caller: Caller, payload: BaseModel | None,
               run: Callable[[], dict[str, Any]], status: int = 200) -> JSONResponse:
    """Runs `run()` (which returns the JSON body of a `status` answer) at most once per Idempotency-Key."""
    ctx: ApiContext = request.app.state.ctx
    key = request.headers.get("idempotency-key")
    if key is None:
        return JSONResponse(run(), status_code=status)
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "An Idempotency-Key is 1 to 255 printable characters.",
                       param="Idempotency-Key")
    fingerprint = _fingerprint(request, payload)
    earlier = _claim(ctx, caller, key, fingerprint)
    if earlier is not None:
        if earlier.request_sha256 != fingerprint:
            raise ApiError(409, "idempotency_key_reused", "This Idempotency-Key was used with another request.",
                           param="Idempotency-Key")
        if earlier.status == IN_PROGRESS:
            raise ApiError(409, "idempotency_key_in_use", "The first request with this Idempotency-Key is still "
                           "running; retry later.")
        return JSONResponse(earlier.body, status_code=earlier.status, headers={"Idempotent-Replayed": "true"})
    try:
        body = run()
    except ApiError as exc:
        if exc.status >= 500:
            _forget(ctx, caller, key)
        else:
            _store(ctx, caller, key, exc.status, _error(exc.status, exc.code, exc.message, exc.param))
        raise
    except BillingError as exc:
        if exc.status >= 500:
            _forget(ctx, caller, key)
        else:
            _store(ctx, caller, key, exc.status, _error(exc.status, exc.code, exc.message, None))
        raise
    except BaseException:
        _forget(ctx, caller, key)
        raise
    _store(ctx, caller, key, status, body)
    return JSONResponse(body, status_code=status)
