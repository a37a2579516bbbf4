"""Who is calling: `Authorization: Bearer <token>` with the operator token (AIHUB_OPERATOR_TOKEN), a member token
(`aihub_mt_...`, billing.members) or an API key (`sk-ah_...`, usage of its own account only).

Errors: 401 `missing_token` (no or malformed header), 401 `invalid_token` (unknown, revoked or removed);
403 `forbidden` (the role lacks the permission, api/permissions.py); another tenant's account is 404
`account_not_found`, the same as an account that does not exist.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select

from api.context import ApiContext
from api.errors import ApiError
from api.permissions import allowed
from billing.db.models import Account, ApiKey
from gateway.keys import hash_api_key, parse_api_key

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="aihub"'}


@dataclass(frozen=True)
class Caller:
    """kind: operator | member | api_key. `role`: 'operator', 'api_key' or the member's role. `id`: who, for the
    audit log and idempotency keys (operator, mem_..., key_...)."""

    kind: str
    role: str
    id: str
    account_id: str | None = None
    email: str | None = None

    def can(self, permission: str) -> bool:
        return allowed(self.role, permission)

    def require(self, permission: str, account_id: str | None = None) -> None:
        """403 unless the caller has `permission`; 404 unless `account_id` is the caller's (operator: any)."""
        if account_id is not None and self.kind != "operator" and account_id != self.account_id:
            raise ApiError(404, "account_not_found", f"No account {account_id!r}.")
        if not self.can(permission):
            raise ApiError(403, "forbidden", f"The {self.role} role may not do this ({permission}).")

    @property
    def actor(self) -> str:
        return "operator" if self.kind == "operator" else f"{self.kind}:{self.id}"


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer` header; 401 missing_token otherwise."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 512:
        raise ApiError(401, "missing_token", "Send `Authorization: Bearer <token>` (an operator token, a member "
                       "token or an API key).", headers=CHALLENGE)
    return token.strip()


def authenticate(ctx: ApiContext, token: str) -> Caller:
    operator = ctx.settings.operator_token
    if operator is not None and hmac.compare_digest(token.encode(), operator.encode()):
        return Caller("operator", "operator", "operator")
    member = ctx.members.authenticate(token)
    if member is not None:
        return Caller("member", member.role, member.member_id, member.account_id, member.email)
    if parse_api_key(token) is not None:
        with ctx.sessions() as session:
            key = session.scalar(select(ApiKey).where(ApiKey.sha256 == hash_api_key(token)))
            if key is not None and key.revoked_at is None:
                account = session.get(Account, key.account_id)
                if account is not None:
                    return Caller("api_key", "api_key", key.id, key.account_id)
    raise ApiError(401, "invalid_token", "This token is unknown, revoked or belongs to a removed member.",
                   headers=CHALLENGE)


def current_caller(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller (cached on the request)."""
    cached = getattr(request.state, "caller", None)
    if isinstance(cached, Caller):
        return cached
    ctx: ApiContext = request.app.state.ctx
    caller = authenticate(ctx, bearer_token(request.headers.get("authorization", "")))
    request.state.caller = caller
    return caller
