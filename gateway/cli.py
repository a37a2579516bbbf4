"""`aihub` admin CLI: accounts, keys, plans, quotas and boosts; `serve` runs the gateway alone."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from gateway.accounts import AccountStore
from gateway.catalog import load_catalog
from gateway.errors import ConfigError, GatewayError
from gateway.runtime import stack_environ
from gateway.settings import Settings, environment


def _until(value: str) -> float:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _store(settings: Settings) -> AccountStore:
    client: Any = (redis.RedisCluster.from_url(settings.redis_url) if settings.redis_cluster
                   else redis.Redis.from_url(settings.redis_url))
    return AccountStore(client, load_catalog(settings.catalog_path), settings.shards)


def _print(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aihub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (proxy + health + metrics)")
    sub.add_parser("up", help="run everything on the embedded defaults (make up)")
    create = sub.add_parser("create-account", help="create an account and issue its first key")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", required=True)
    create.add_argument("--country", default="US")
    create.add_argument("--id", dest="account_id")
    sub.add_parser("list-accounts")
    show = sub.add_parser("show-account")
    show.add_argument("account")
    issue = sub.add_parser("issue-key", help="issue a new API key (shown once)")
    issue.add_argument("account")
    issue.add_argument("--name", default="default")
    revoke = sub.add_parser("revoke-key")
    revoke.add_argument("account")
    revoke.add_argument("key_id")
    plan = sub.add_parser("set-plan")
    plan.add_argument("account")
    plan.add_argument("plan")
    quota = sub.add_parser("set-quota", help="custom monthly calls quota (plans that allow it)")
    quota.add_argument("account")
    quota.add_argument("calls", help="a number of calls, or 'default'")
    overage = sub.add_parser("set-overage", help="pay-as-you-go overage on or off")
    overage.add_argument("account")
    overage.add_argument("state", choices=["on", "off"])
    status = sub.add_parser("set-status")
    status.add_argument("account")
    status.add_argument("status", choices=["active", "suspended"])
    boost = sub.add_parser("boost", help="grant extra calls until a date")
    boost.add_argument("account")
    boost.add_argument("--calls", type=int, required=True)
    boost.add_argument("--until", required=True, help="ISO date or datetime (UTC)")
    return parser


def run(args: argparse.Namespace, settings: Settings) -> None:
    if args.command == "serve":
        from gateway.server import serve
        serve(settings)
        return
    if args.command == "up":
        from gateway.stack import run_stack
        run_stack()
        return
    store = _store(settings)
    if args.command == "create-account":
        account_id = store.create_account(args.name, args.plan, country=args.country, account_id=args.account_id)
        issued = store.issue_key(account_id)
        _print({"account": account_id, "plan": args.plan, "key_id": issued.key_id, "api_key": issued.api_key})
    elif args.command == "list-accounts":
        _print([store.get_account(a) for a in store.list_accounts()])
    elif args.command == "show-account":
        _print(store.get_account(args.account) | {"keys": store.list_keys(args.account)})
    elif args.command == "issue-key":
        issued = store.issue_key(args.account, args.name)
        _print({"account": issued.account_id, "key_id": issued.key_id, "api_key": issued.api_key})
    elif args.command == "revoke-key":
        store.revoke_key(args.account, args.key_id)
        _print({"revoked": args.key_id})
    elif args.command == "set-plan":
        store.set_plan(args.account, args.plan)
        _print(store.get_account(args.account))
    elif args.command == "set-quota":
        calls = None if args.calls == "default" else int(args.calls)
        store.set_custom_quota(args.account, calls)
        _print(store.get_account(args.account))
    elif args.command == "set-overage":
        store.set_overage(args.account, args.state == "on")
        _print(store.get_account(args.account))
    elif args.command == "set-status":
        store.set_status(args.account, args.status)
        _print(store.get_account(args.account))
    elif args.command == "boost":
        boost_id = store.add_boost(args.account, args.calls, _until(args.until))
        _print({"boost": boost_id, "calls": args.calls, "until": args.until})


ROLES = ("serve", "up")   # configured by their environment alone; the admin commands find a running stack


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ROLES:
            settings = Settings.from_env()
        else:
            environ, source = stack_environ(environment())
            settings = Settings.from_env(environ)
            sys.stderr.write(f"aihub: using Redis {settings.redis_url} ({source})\n")
        run(args, settings)
    except (ConfigError, GatewayError, ValueError) as exc:
        sys.stderr.write(f"aihub: {exc}\n")
        return 2
    except redis.RedisError as exc:
        sys.stderr.write(f"aihub: Redis is not reachable ({exc}); is REDIS_URL right?\n")
        return 2
    except KeyboardInterrupt:      # Ctrl-C: everything started has been stopped on the way out
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
