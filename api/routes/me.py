"""`GET /api/v1/me`: who the token belongs to and what it may do."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.params import AuthCaller
from api.permissions import PERMISSIONS

router = APIRouter(tags=["me"])


class Me(BaseModel):
    kind: str              # operator | member | api_key
    role: str
    id: str
    account_id: str | None
    email: str | None
    permissions: list[str]


@router.get("/me", response_model=Me, summary="The caller")
def me(caller: AuthCaller) -> Me:
    return Me(kind=caller.kind, role=caller.role, id=caller.id, account_id=caller.account_id, email=caller.email,
              permissions=[p for p in PERMISSIONS if caller.can(p)])
