"""Each role's rights, endpoint by endpoint: every operation of the OpenAPI document is called by every kind of
caller, and the answer is 403 exactly when api/permissions.py's table says the role lacks the operation's
permission (checked before anything the caller sent is read). The docs' role table is the generated one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from api.permissions import ROLE_TABLE, allowed, markdown_table
from billing.db.models import MEMBER_ROLES
from tests.api.conftest import bearer, error_code, operator

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = {"member_id": "mem_0000000000000000", "invite_id": "inv_0000000000000000"}


def _operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    doc = client.get("/api/openapi.json").json()
    return [(method.upper(), path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_every_operation_declares_its_permission(client: TestClient) -> None:
    for method, path, op in _operations(client):
        if op.get("security") == [] or path.endswith("/me"):
            continue
        assert op.get("x-permission") in ROLE_TABLE, f"{method} {path} declares no known permission"
        if "{account_id}" not in path and op["x-permission"] != "operator":
            assert op["x-permission"] in ("account:read",), f"{method} {path}: not account-scoped"


def test_each_role_gets_403_exactly_where_the_table_says(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    key = client.post(f"/api/v1/accounts/{t.account_id}/keys", headers=t.h(), json={"name": "k"}).json()["api_key"]
    callers = {**{role: t.h(role) for role in MEMBER_ROLES}, "api_key": bearer(key), "operator": operator()}
    checked = 0
    for method, path, op in _operations(client):
        permission = op.get("x-permission")
        if permission is None:
            continue
        url = path.replace("/api", "", 1) if path.startswith("/api/") else path
        url = "/api" + re.sub(r"\{(\w+)\}", lambda m: t.account_id if m.group(1) == "account_id"
                              else PLACEHOLDERS.get(m.group(1), "zzzz0000"), url)
        for role, headers in callers.items():
            response = client.request(method, url, headers=headers)
            denied = response.status_code == 403 and error_code(response) == "forbidden"
            assert denied == (not allowed(role, permission)), (method, path, role, response.status_code,
                                                               response.text[:200])
            checked += 1
    assert checked >= 7 * 10


def test_docs_role_table_is_the_generated_one() -> None:
    assert markdown_table() in (ROOT / "docs" / "api.md").read_text()


def test_docs_list_every_endpoint(ctx: object) -> None:
    from api.app import create_api, endpoint_table
    assert endpoint_table(create_api(ctx)) in (ROOT / "docs" / "api.md").read_text()  # type: ignore[arg-type]
