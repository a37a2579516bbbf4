"""The management API's common behaviour: who may call, the one error shape, validation, pagination and
Idempotency-Key."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from tests.api.conftest import bearer, error_code, operator


def test_no_token_unknown_token_and_malformed_header_are_401(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "},
                    bearer("aihub_mt_nonsense"), bearer("sk-ah_abcd_efgh_" + "x" * 30)):
        response = client.get(f"/api/v1/accounts/{t.account_id}", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert error_code(response) in ("missing_token", "invalid_token")


def test_me_tells_who_and_what(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    me = client.get("/api/v1/me", headers=t.h("viewer")).json()
    assert me["kind"] == "member" and me["role"] == "viewer" and me["account_id"] == t.account_id
    assert "usage:read" in me["permissions"] and "members:write" not in me["permissions"]
    assert client.get("/api/v1/me", headers=operator()).json()["kind"] == "operator"


def test_another_tenants_account_is_not_found(client: TestClient, tenant: Any) -> None:
    a, b = tenant("enterprise"), tenant("enterprise")
    for path in ("", "/keys", "/members", "/invites"):
        response = client.get(f"/api/v1/accounts/{b.account_id}{path}", headers=a.h())
        assert response.status_code == 404 and error_code(response) == "account_not_found"
    response = client.post(f"/api/v1/accounts/{b.account_id}/keys", headers=a.h(), json={"name": "x"})
    assert response.status_code == 404
    assert client.get(f"/api/v1/accounts/{b.account_id}/keys", headers=operator()).status_code == 200


def test_an_api_key_reads_only_its_own_usage(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    created = client.post(f"/api/v1/accounts/{t.account_id}/keys", headers=t.h(), json={"name": "ci"}).json()
    key = created["api_key"]
    assert key.startswith("sk-ah_")
    me = client.get("/api/v1/me", headers=bearer(key)).json()
    assert me["kind"] == "api_key" and me["permissions"] == ["usage:read"]
    response = client.get(f"/api/v1/accounts/{t.account_id}/keys", headers=bearer(key))
    assert response.status_code == 403 and error_code(response) == "forbidden"
    client.post(f"/api/v1/accounts/{t.account_id}/keys/{created['key']['id']}/revoke", headers=t.h())
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401


def test_bad_input_is_400_with_code_and_param(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    url = f"/api/v1/accounts/{t.account_id}/keys"
    cases = [({"name": "ok", "colour": "red"}, "unknown_field", "colour"),
             ({"name": 5}, "invalid_type", "name"),
             ({"name": "x" * 101}, "out_of_range", "name")]
    for body, code, param in cases:
        response = client.post(url, headers=t.h(), json=body)
        assert response.status_code == 400, response.text
        assert error_code(response) == code and response.json()["error"]["param"] == param
    response = client.post(url, headers={**t.h(), "Content-Type": "application/json"}, content=b"{not json")
    assert response.status_code == 400 and error_code(response) == "invalid_json"
    response = client.get(f"{url}?limit=0", headers=t.h())
    assert response.status_code == 400 and error_code(response) == "out_of_range"
    response = client.post(f"/api/v1/accounts/{t.account_id}/invites", headers=t.h(),
                           json={"email": "a@b.example", "role": "superuser"})
    assert response.status_code == 400 and error_code(response) == "invalid_value"


def test_unknown_route_and_wrong_method(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    response = client.get("/api/v1/nothing-here", headers=t.h())
    assert response.status_code == 404 and error_code(response) == "unknown_url"
    response = client.put(f"/api/v1/accounts/{t.account_id}", headers=t.h())
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"


def test_cursor_pagination_walks_every_key_once(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    made = {client.post(f"/api/v1/accounts/{t.account_id}/keys", headers=t.h(),
                        json={"name": f"k{i}"}).json()["key"]["id"] for i in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&starting_after={cursor}" if cursor else "")
        page = client.get(f"/api/v1/accounts/{t.account_id}/keys{query}", headers=t.h()).json()
        seen += [k["id"] for k in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(made) and len(seen) == 5
    response = client.get(f"/api/v1/accounts/{t.account_id}/keys?starting_after=zzzz", headers=t.h())
    assert response.status_code == 400 and error_code(response) == "invalid_cursor"


def test_idempotency_key_replays_without_creating_twice(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    url = f"/api/v1/accounts/{t.account_id}/keys"
    headers = {**t.h(), "Idempotency-Key": "create-ci-key-1"}
    first = client.post(url, headers=headers, json={"name": "ci"})
    again = client.post(url, headers=headers, json={"name": "ci"})
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["key"] == first.json()["key"]
    assert first.json()["api_key"] and again.json()["api_key"] is None     # the key is never stored
    keys = client.get(url, headers=t.h()).json()["data"]
    assert [k["name"] for k in keys] == ["ci"]
    other = client.post(url, headers=headers, json={"name": "other"})
    assert other.status_code == 409 and error_code(other) == "idempotency_key_reused"
    # another caller's identical key is its own
    assert client.post(url, headers={**operator(), "Idempotency-Key": "create-ci-key-1"},
                       json={"name": "ci"}).status_code == 201


def test_operator_creates_an_account_with_its_owner(client: TestClient) -> None:
    response = client.post("/api/v1/accounts", headers=operator(),
                           json={"name": "Acme", "plan": "free", "id": "acme", "owner_email": "ceo@acme.example"})
    assert response.status_code == 201, response.text
    token = response.json()["owner_token"]
    assert client.get("/api/v1/accounts/acme", headers=bearer(token)).json()["name"] == "Acme"
    bad = client.post("/api/v1/accounts", headers=operator(),
                      json={"name": "Bad", "plan": "free", "id": "badco", "owner_email": "not-an-email"})
    assert bad.status_code == 400 and error_code(bad) == "bad_email"
    assert client.get("/api/v1/accounts/badco", headers=operator()).status_code == 404   # nothing half-made
    listed = client.get("/api/v1/accounts", headers=operator()).json()
    assert [a["id"] for a in listed["data"]] == ["acme"]
    assert client.post("/api/v1/accounts", headers=bearer(token), json={"name": "x", "plan": "free"}).status_code \
        == 403


def test_openapi_document_and_docs_page(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert "/api/v1/accounts/{account_id}/keys" in doc["paths"] or "/v1/accounts/{account_id}/keys" in doc["paths"]
    assert "ErrorResponse" in doc["components"]["schemas"]
    page = client.get("/api/docs")
    assert page.status_code == 200 and "openapi.json" in page.text


def test_a_paid_account_needs_bank_transfer_or_a_method(client: TestClient, ctx: object) -> None:
    ctx.accounts.require_payment_method = True  # type: ignore[attr-defined]
    refused = client.post("/api/v1/accounts", headers=operator(), json={"name": "P", "plan": "pro", "id": "paid1"})
    assert refused.status_code == 400 and error_code(refused) == "payment_method_required"
    made = client.post("/api/v1/accounts", headers=operator(),
                       json={"name": "P", "plan": "pro", "id": "paid2", "bank_transfer": True})
    assert made.status_code == 201 and made.json()["account"]["subscription"]["plan"] == "pro"


def test_the_token_is_checked_before_the_body_and_bodies_are_bounded(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    url = f"/api/v1/accounts/{t.account_id}/keys"
    response = client.post(url, headers={"Content-Type": "application/json"}, content=b"{not json")
    assert response.status_code == 401 and error_code(response) == "missing_token"
    big = b'{"name": "' + b"x" * (1 << 20) + b'"}'
    response = client.post(url, headers={**t.h(), "Content-Type": "application/json"}, content=big)
    assert response.status_code == 413 and error_code(response) == "request_too_large"

    def chunks() -> Any:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'
    response = client.post(url, headers={**t.h(), "Content-Type": "application/json"}, content=chunks())
    assert response.status_code == 413 and error_code(response) == "request_too_large"
    assert client.get("/api/v1/me", headers=t.h()).headers["cache-control"] == "no-store"
    assert client.get("/api/v1/me/", headers=t.h()).status_code == 404


def test_control_characters_are_refused_not_stored(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    for body in ({"name": "nul\u0000"}, {"name": "esc\u001b[31m"}, {"name": "line\nbreak"}):
        response = client.post(f"/api/v1/accounts/{t.account_id}/keys", headers=t.h(), json=body)
        assert response.status_code == 400 and error_code(response) == "invalid_value", response.text
    response = client.post(f"/api/v1/accounts/{t.account_id}/invites", headers=t.h(),
                           json={"email": "n\u0000@x.example", "role": "viewer"})
    assert response.status_code == 400


def test_secrets_in_a_replayed_answer_are_null(client: TestClient) -> None:
    headers = {**operator(), "Idempotency-Key": "acct-1"}
    body = {"name": "Acme", "plan": "free", "id": "acmeco", "owner_email": "boss@acme.example"}
    first = client.post("/api/v1/accounts", headers=headers, json=body)
    again = client.post("/api/v1/accounts", headers=headers, json=body)
    assert first.json()["owner_token"] and again.json()["owner_token"] is None
    assert again.json()["account"] == first.json()["account"]


def test_members_cannot_enable_bank_transfer(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    free = tenant("free")
    response = client.post(f"/api/v1/accounts/{free.account_id}/payment-methods", headers=free.h(),
                           json={"provider": "bank_transfer"})
    assert response.status_code == 403 and error_code(response) == "forbidden"
    assert client.post(f"/api/v1/accounts/{free.account_id}/payment-methods", headers=operator(),
                       json={"provider": "bank_transfer"}).status_code == 201
    assert t


def test_the_docs_page_needs_no_cdn(client: TestClient) -> None:
    page = client.get("/api/docs").text
    assert "cdn." not in page and "/api/docs-static/swagger-ui-bundle.js" in page and "/api/openapi.json" in page
    script = client.get("/api/docs-static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert client.get("/api/docs-static/nothing.js").status_code == 404


def test_a_body_that_is_not_utf8_is_invalid_json(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    response = client.post(f"/api/v1/accounts/{t.account_id}/keys", content=b'{"name": "\xff\xfe"}',
                           headers={**t.h(), "Content-Type": "application/json"})
    assert response.status_code == 400 and error_code(response) == "invalid_json"
