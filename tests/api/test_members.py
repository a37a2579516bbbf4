"""Teams: invitations by email (a real SMTP server), one-time acceptance, roles, removal and the last owner."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from starlette.testclient import TestClient

from api.context import ApiContext
from gateway.redis_server import free_port
from tests.api.conftest import bearer, error_code, operator
from tests.billing.test_notifications import Inbox
from tests.quota.conftest import PinnedClock


@pytest.fixture
def inbox(ctx: ApiContext) -> Iterator[Inbox]:
    from billing.notifications_settings import SmtpSettings
    box = Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    ctx.settings = dataclasses.replace(ctx.settings, smtp=SmtpSettings(host="127.0.0.1", port=controller.port,
                                                                         sender="team@aihub.example"))
    yield box
    controller.stop()


def _invite(client: TestClient, t: Any, email: str, role: str, who: str = "owner") -> Any:
    return client.post(f"/api/v1/accounts/{t.account_id}/invites", headers=t.h(who), json={"email": email,
                                                                                          "role": role})


def test_invite_by_email_then_accept_once(client: TestClient, tenant: Any, inbox: Inbox) -> None:
    t = tenant("enterprise", roles=False)
    response = _invite(client, t, "Dev@Example.com", "developer")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email_sent"] is True and body["invite"]["status"] == "pending"
    assert body["invite"]["email"] == "dev@example.com"
    [message] = inbox.messages
    assert message["To"] == "dev@example.com" and f"Tenant {t.account_id}" in message["Subject"]
    token = re.search(r"aihub_inv_[A-Za-z0-9_-]+", message.get_content()).group(0)  # type: ignore[union-attr]
    assert token == body["token"]
    accepted = client.post("/api/v1/invites/accept", json={"token": token})
    assert accepted.status_code == 201
    member_token = accepted.json()["token"]
    me = client.get("/api/v1/me", headers=bearer(member_token)).json()
    assert me["role"] == "developer" and me["account_id"] == t.account_id
    again = client.post("/api/v1/invites/accept", json={"token": token})
    assert again.status_code == 404 and error_code(again) == "invite_not_found"
    listed = client.get(f"/api/v1/accounts/{t.account_id}/invites", headers=t.h()).json()["data"]
    assert [i["status"] for i in listed] == ["accepted"]


def test_expired_and_revoked_invitations_do_not_work(client: TestClient, tenant: Any, api_clock: PinnedClock) -> None:
    t = tenant("enterprise", roles=False)
    late = _invite(client, t, "late@example.com", "viewer").json()
    revoked = _invite(client, t, "gone@example.com", "viewer").json()
    client.post(f"/api/v1/accounts/{t.account_id}/invites/{revoked['invite']['id']}/revoke", headers=t.h())
    assert client.post("/api/v1/invites/accept", json={"token": revoked["token"]}).status_code == 404
    api_clock.advance(timedelta(days=7, seconds=1).total_seconds())
    assert client.post("/api/v1/invites/accept", json={"token": late["token"]}).status_code == 404
    assert client.post("/api/v1/invites/accept", json={"token": "aihub_inv_guess"}).status_code == 404


def test_teams_are_an_enterprise_feature(client: TestClient, tenant: Any) -> None:
    t = tenant("pro")
    response = _invite(client, t, "second@example.com", "viewer")
    assert response.status_code == 403 and error_code(response) == "plan_feature_unavailable"
    assert len(client.get(f"/api/v1/accounts/{t.account_id}/members", headers=t.h()).json()["data"]) == 1


def test_who_may_invite_and_change_roles(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    for role in ("billing", "developer", "viewer"):
        response = _invite(client, t, f"x-{role}@example.com", "viewer", who=role)
        assert response.status_code == 403 and error_code(response) == "forbidden"
    assert _invite(client, t, "helper@example.com", "viewer", who="admin").status_code == 201
    response = _invite(client, t, "boss@example.com", "owner", who="admin")
    assert response.status_code == 403          # only an owner invites an owner
    url = f"/api/v1/accounts/{t.account_id}/members/{t.member_ids['viewer']}"
    assert client.post(url, headers=t.h("admin"), json={"role": "billing"}).json()["role"] == "billing"
    assert client.post(url, headers=t.h("admin"), json={"role": "owner"}).status_code == 403
    assert client.post(url, headers=t.h("owner"), json={"role": "owner"}).json()["role"] == "owner"


def test_removed_member_loses_access_and_the_last_owner_stays(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    viewer_url = f"/api/v1/accounts/{t.account_id}/members/{t.member_ids['viewer']}"
    assert client.delete(viewer_url, headers=t.h("admin")).status_code == 200
    assert client.get("/api/v1/me", headers=t.h("viewer")).status_code == 401
    owner_url = f"/api/v1/accounts/{t.account_id}/members/{t.member_ids['owner']}"
    assert client.delete(owner_url, headers=t.h("admin")).status_code == 403
    response = client.delete(owner_url, headers=t.h("owner"))
    assert response.status_code == 409 and error_code(response) == "last_owner"
    response = client.post(owner_url, headers=operator(), json={"role": "admin"})
    assert response.status_code == 409 and error_code(response) == "last_owner"


def test_member_tokens_are_stored_hashed(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise", roles=False)
    invite = _invite(client, t, "someone@example.com", "viewer").json()
    from sqlalchemy import text
    with ctx.store.engine.connect() as conn:
        dump = " ".join(str(row) for table in ("members", "invites", "idempotency_records", "audit_log")
                        for row in conn.execute(text(f"SELECT * FROM {table}")))
    assert t.owner not in dump and invite["token"] not in dump
    assert "aihub_mt_" not in dump and "aihub_inv_" not in dump


def test_an_invitation_lapses_with_its_inviters_right(client: TestClient, tenant: Any) -> None:
    t = tenant("enterprise")
    ghost = _invite(client, t, "ghost@evil.example", "admin", who="admin").json()
    kept = _invite(client, t, "friend@example.com", "viewer", who="owner").json()
    client.delete(f"/api/v1/accounts/{t.account_id}/members/{t.member_ids['admin']}", headers=t.h())
    response = client.post("/api/v1/invites/accept", json={"token": ghost["token"]})
    assert response.status_code == 404 and error_code(response) == "invite_not_found"
    states = {i["email"]: i["status"] for i in
              client.get(f"/api/v1/accounts/{t.account_id}/invites", headers=t.h()).json()["data"]}
    assert states["ghost@evil.example"] == "revoked"
    assert client.post("/api/v1/invites/accept", json={"token": kept["token"]}).status_code == 201


def test_an_invitation_needs_the_team_plan_when_accepted(client: TestClient, tenant: Any, ctx: ApiContext) -> None:
    t = tenant("enterprise", roles=False)
    invite = _invite(client, t, "late@example.com", "viewer").json()
    ctx.accounts.set_plan(t.account_id, "pro", now=True)
    response = client.post("/api/v1/invites/accept", json={"token": invite["token"]})
    assert response.status_code == 403 and error_code(response) == "plan_feature_unavailable"
