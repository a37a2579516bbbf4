"""`make up`: the whole product on the embedded defaults in one command.

Starts a private redis-server (unless REDIS_URL is set; append-only file under `<AIHUB_VAR_DIR>/redis`,
fsynced every second, so keys, counters, boosts and undrained usage survive a restart), the fake
OpenAI-compatible upstream (unless AIHUB_UPSTREAM_DEFAULT_URL is set), opens the system of record
(DATABASE_URL, default the SQLite file `<AIHUB_VAR_DIR>/aihub.db`) and projects it into Redis, creates the
demo accounts that do not exist yet (one per plan; their keys are printed once, when created), runs the billing
worker on chDB in this process, prints how to call the gateway, and serves until Ctrl-C.

Its children run in their own sessions, so a terminal's Ctrl-C reaches this process only; it then stops
in order, losing nothing: the gateway stops accepting, finishes and settles the requests in flight, the
worker runs a last drain of the usage streams into ClickHouse, and only then are the fake upstream and the
private Redis stopped. While it runs, `<AIHUB_VAR_DIR>/runtime.json` tells the CLIs where it is.

One `make up` or `make stack` per var dir (gateway.up_lock): it holds `<AIHUB_VAR_DIR>/up.lock` for its whole life
and passes it to its Redis and fake upstream; a start finding either still running on the var dir refuses (exit
status 2), one finding it killed first stops the Redis and upstream it left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from billing.accounts import AccountService
from gateway.catalog import Catalog, load_catalog
from gateway.redis_server import RedisServer, free_port
from gateway.runtime import Runtime, remove_runtime, runtime_path, write_runtime
from gateway.settings import Settings, var_dir
from gateway.up_lock import VarDirLock, var_dir_lock

DEMO_ACCOUNTS = (("demofree", "free", "Demo Free"), ("demopro", "pro", "Demo Pro"),
                 ("demoent", "enterprise", "Demo Enterprise"))
log = logging.getLogger("aihub.up")


def seed_demo(accounts: AccountService) -> list[tuple[str, str, str | None]]:
    """(account, plan, api key or None) per demo account: an account is created, with a key, only when it does
    not exist yet; keys are stored hashed, so an existing account's key cannot be shown again."""
    seeded: list[tuple[str, str, str | None]] = []
    for account_id, plan, name in DEMO_ACCOUNTS:
        if accounts.exists(account_id):
            seeded.append((account_id, plan, None))
            continue
        # the paid demo accounts pay by bank transfer: a paid plan needs a payment method (billing.accounts)
        accounts.create_account(name, plan, account_id=account_id, bank_transfer=plan != "free", actor="make-up")
        issued, _ = accounts.issue_key(account_id, "make-up", actor="make-up")
        seeded.append((account_id, plan, issued.api_key))
    return seeded


def resync_and_seed(env: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """Projects the system of record into Redis (the database is the record: Redis follows it), then seeds the
    demo accounts (`seed_demo`). Used by `make up` and `make stack` (gateway.multi)."""
    from billing.store import open_accounts
    store = open_accounts(env)
    try:
        report = store.resync()
        log.info("projected %d accounts into Redis", report.projected + report.overwritten)
        if report.orphans:
            log.warning("Redis has %d accounts the database does not know (%s); `aihub resync --prune` takes "
                        "them out of service", len(report.orphans), ", ".join(report.orphans[:5]))
        return seed_demo(store.accounts)
    finally:
        store.close()


def banner(url: str, seeded: list[tuple[str, str, str | None]], catalog: Catalog) -> str:
    key = next((k for _, _, k in seeded if k), None) or "<a demo key>"
    model = next(iter(catalog.models))
    lines = ["", f"aihub gateway listening on {url}  (Ctrl-C stops everything)", "", "Demo API keys:"]
    lines += [f"  {plan:<11} {account:<9} {api_key}" for account, plan, api_key in seeded if api_key]
    kept = [(account, plan) for account, plan, api_key in seeded if not api_key]
    if kept:
        lines += ["", "Kept from an earlier run (keys are shown once, when issued; the old ones still work):"]
        lines += [f"  {plan:<11} {account:<9} new key: .venv/bin/aihub issue-key {account}" for account, plan in kept]
    lines += ["", "Try it with curl:",
              f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
              f"-H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
              "", "Or with the openai SDK (pip install openai):",
              "  from openai import OpenAI",
              f"  client = OpenAI(base_url='{url}/v1', api_key='{key}')",
              f"  print(client.chat.completions.create(model='{model}', "
              "messages=[{'role': 'user', 'content': 'Hello'}]).choices[0].message.content)",
              f"  for chunk in client.chat.completions.create(model='{model}', stream=True, "
              "messages=[{'role': 'user', 'content': 'Hello'}]):",
              "      print(chunk.choices[0].delta.content or '', end='', flush=True)",
              "", f"Health: {url}/healthz   Ready: {url}/readyz   Metrics: {url}/metrics", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def _private_redis(env: dict[str, str], directory: Path, lock: VarDirLock | None = None) -> Iterator[None]:
    """`lock`: the var dir's (`var_dir_lock`), passed to the server, which is recorded as its child."""
    if env.get("REDIS_URL"):
        yield
        return
    server = RedisServer(workdir=directory / "redis", detached=True, pass_fds=(lock.fd,) if lock else (),
                         extra_args=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    env["REDIS_URL"] = server.url
    try:
        if lock is not None:
            lock.add_child(server.pid, "redis-server")
        yield
    finally:
        server.shutdown()      # SIGTERM: Redis fsyncs its append-only file before it exits


@contextlib.contextmanager
def _fake_upstream(env: dict[str, str], lock: VarDirLock | None = None) -> Iterator[None]:
    """`lock`: as for `_private_redis`."""
    if env.get("AIHUB_UPSTREAM_DEFAULT_URL"):
        yield
        return
    from fakes.openai_upstream import spawn_process
    key = "sk-upstream-demo"
    proc, url = spawn_process(free_port(), api_key=key, new_session=True, pass_fds=(lock.fd,) if lock else ())
    env["AIHUB_UPSTREAM_DEFAULT_URL"] = url
    env["AIHUB_UPSTREAM_DEFAULT_KEY"] = key
    try:
        if lock is not None:
            lock.add_child(proc.pid, "fake upstream")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _runtime_file(path: Path, runtime: Runtime) -> Iterator[None]:
    write_runtime(path, runtime)
    try:
        yield
    finally:
        remove_runtime(path, runtime.pid)


def api_routes(env: dict[str, str]) -> list[Any]:
    """The API role's routes (webhooks, management API, dashboard), served on the gateway's port in `make up`."""
    from api.mount import api_routes as routes
    return routes(env)


def run_stack() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = dict(os.environ)
    env.setdefault("AIHUB_PORT", "8080")
    directory = var_dir(env)
    with var_dir_lock(directory) as lock, _private_redis(env, directory, lock), _fake_upstream(env, lock):
        os.environ.update(env)
        settings = Settings.from_env(env)
        catalog = load_catalog(settings.catalog_path)
        from api.mount import ensure_operator_token
        operator_token = ensure_operator_token(env)
        os.environ.update(env)
        seeded = resync_and_seed(env)
        from api.demo import banner as api_banner
        from api.demo import seed_owners
        owners = seed_owners(env, [account for account, _, _ in seeded])
        from billing_worker.embedded import embedded_worker
        from billing_worker.settings import Settings as WorkerSettings
        from gateway.server import serve
        worker_settings = WorkerSettings.from_env(env)
        url = f"http://{settings.host}:{settings.port}"
        runtime = Runtime(pid=os.getpid(), redis_url=settings.redis_url,
                          clickhouse_url=worker_settings.clickhouse_url, gateway_url=url)
        # owns the chDB directory: API and worker live in this process
        with embedded_worker(worker_settings), _runtime_file(runtime_path(directory), runtime):
            sys.stdout.write(banner(url, seeded, catalog) + "\n" + api_banner(url, operator_token, owners))
            sys.stdout.flush()
            serve(settings, extra_routes=api_routes(env))
            log.info("gateway stopped; last drain, then the fake upstream and Redis stop")
