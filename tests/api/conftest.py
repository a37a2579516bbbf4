"""Management API fixtures: the API mounted at /api as in `make up`, on a migrated SQLite database, a private Redis
and a chDB directory, with a pinned clock; `tenant(plan)` makes an account with an owner and returns its tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from api.app import create_api
from api.context import ApiContext, open_context
from billing.payments.bank_transfer import BankTransferProvider
from billing.store import open_accounts
from billing_worker.clickhouse import ClickHouse
from billing_worker.migrate import migrate as migrate_clickhouse
from billing_worker.settings import Settings as WorkerSettings
from tests.quota.conftest import PinnedClock

OPERATOR = "op-token-for-tests-0123456789abcdef"


@pytest.fixture
def api_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{tmp_path}/aihub.db", "REDIS_URL": redis_url,
            "AIHUB_OPERATOR_TOKEN": OPERATOR, "CLICKHOUSE_URL": f"chdb://{tmp_path}/chdb",
            "AIHUB_VAR_DIR": str(tmp_path / "var")}


@pytest.fixture
def api_clock() -> PinnedClock:
    return PinnedClock()


@pytest.fixture
def ctx(api_env: dict[str, str], api_clock: PinnedClock) -> Iterator[ApiContext]:
    store = open_accounts(api_env, clock=api_clock)
    clickhouse = ClickHouse(api_env["CLICKHOUSE_URL"])
    migrate_clickhouse(clickhouse, WorkerSettings().schema_dir)      # as the worker does at start
    context = open_context(api_env, store, clickhouse_factory=lambda: clickhouse)
    context.payments.providers = {**context.payments.providers, "bank_transfer": BankTransferProvider()}
    yield context
    clickhouse.close()
    store.close()


@pytest.fixture
def client(ctx: ApiContext) -> Iterator[TestClient]:
    app = Starlette(routes=[Mount("/api", app=create_api(ctx))])
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    account_id: str
    owner: str                                  # the owner's member token
    tokens: dict[str, str]                      # role -> member token (Enterprise tenants have one per role)
    member_ids: dict[str, str]

    def h(self, role: str = "owner") -> dict[str, str]:
        return bearer(self.tokens[role])


@pytest.fixture
def tenant(ctx: ApiContext) -> Callable[..., Tenant]:
    counter = iter(range(1000))

    def make(plan: str = "enterprise", roles: bool = True) -> Tenant:
        account_id = f"acct{next(counter):04d}{plan[:3]}"
        ctx.accounts.create_account(f"Tenant {account_id}", "free", account_id=account_id,
                                    billing_email=f"billing@{account_id}.example")
        if plan != "free":
            ctx.payments.enable_bank_transfer(account_id)
            ctx.accounts.set_plan(account_id, plan, now=True)
        owner = ctx.members.add_member(account_id, f"owner@{account_id}.example", "owner")
        tokens, ids = {"owner": owner.token}, {"owner": str(owner.member["id"])}
        if roles and plan == "enterprise":
            for role in ("admin", "billing", "developer", "viewer"):
                made = ctx.members.add_member(account_id, f"{role}@{account_id}.example", role)
                tokens[role], ids[role] = made.token, str(made.member["id"])
        return Tenant(account_id, owner.token, tokens, ids)
    return make


def operator() -> dict[str, str]:
    return bearer(OPERATOR)


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return str(body["error"]["code"])
