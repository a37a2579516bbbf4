"""The API role's routes, to serve beside the proxy on one port (`make up`) or alone (`make stack`'s API process):
provider webhooks at `/webhooks/*`, the management API at `/api` (api/app.py) and the dashboard at `/dashboard`
(api/dashboard.py). Only a process that may open ClickHouse (with chDB: the one that owns its directory) serves
them, since usage history reads it."""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Mapping, MutableMapping
from typing import Any

from starlette.routing import BaseRoute, Mount


def ensure_operator_token(env: MutableMapping[str, str]) -> str | None:
    """For `make up`: when AIHUB_OPERATOR_TOKEN is not set, one is made for this run (returned, to print once)."""
    if env.get("AIHUB_OPERATOR_TOKEN"):
        return None
    token = "aihub_op_" + secrets.token_urlsafe(24)
    env["AIHUB_OPERATOR_TOKEN"] = token
    return token


def api_routes(env: Mapping[str, str]) -> list[BaseRoute]:
    from api.app import create_api
    from api.context import open_context
    from api.webhooks import Webhooks
    from billing.store import open_accounts
    from billing_worker.clickhouse import ClickHouse
    from billing_worker.payments import providers
    from billing_worker.settings import Settings as WorkerSettings
    store = open_accounts(env)
    clickhouse = ClickHouse(WorkerSettings.from_env(env).clickhouse_url)
    ctx = open_context(env, store, clickhouse_factory=lambda: clickhouse)
    routes: list[BaseRoute] = [*Webhooks(lambda: store, paypal=providers(env).get("paypal")).routes(),
                               Mount("/api", app=create_api(ctx))]
    if importlib.util.find_spec("api.dashboard") is not None:
        dashboard: Any = importlib.import_module("api.dashboard")
        routes += dashboard.routes()
    return routes
