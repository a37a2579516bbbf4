"""`python -m billing_worker worker | drain | migrate | usage | export | anomalies | rollup`.

Settings are read once from the environment (billing_worker.settings); exit codes: 0 ok,
1 failure, 2 bad configuration or arguments, 3 ClickHouse unavailable (rows stay pending).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TextIO

import orjson
import redis

from billing_worker import drain, export, migrate, redis_streams, rollup
from billing_worker.anomalies import usage_anomalies
from billing_worker.clickhouse import ClickHouse
from billing_worker.errors import BillingWorkerError, ClickHouseUnavailable, ConfigError, InvalidArgument
from billing_worker.export import line_record
from billing_worker.money import format_money
from billing_worker.periods import check_period, current_period
from billing_worker.progress import ProgressBar
from billing_worker.quota_counters import current_usage
from billing_worker.settings import Settings
from billing_worker.usage_queries import account_totals, cost_by_model, has_usage, usage_by_day, usage_by_key
from gateway.keys import ID_RE, AccountKeys, usage_streams
from gateway.runtime import stack_environ


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m billing_worker",
                                description="Billing worker: usage drain, ClickHouse schema, usage reports.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drain", help="drain the usage streams into ClickHouse once, until empty")
    d.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    m = sub.add_parser("migrate", help="apply pending ClickHouse schema files")
    m.add_argument("--cluster", default=None, help="cluster variant: ReplicatedMergeTree + Distributed")
    m.add_argument("--print", dest="print_only", action="store_true", help="print the SQL, apply nothing")
    u = sub.add_parser("usage", help="one account's usage: live counters and history")
    u.add_argument("account")
    u.add_argument("--period", default=None, help="YYYY-MM (default: the current UTC month)")
    u.add_argument("--format", choices=("text", "json"), default="text")
    e = sub.add_parser("export", help="export a period's usage lines as CSV or JSON")
    e.add_argument("--period", required=True)
    e.add_argument("--account", default=None, help="one account (default: all, admin)")
    e.add_argument("--format", choices=export.FORMATS, default="csv")
    e.add_argument("--by", default="day,model,key", help="comma-separated: day, model, key (or empty)")
    e.add_argument("--output", "-o", default="-", help="file name, - for stdout")
    a = sub.add_parser("anomalies", help="days whose calls exceed a multiple of the trailing average")
    a.add_argument("--period", required=True)
    a.add_argument("--account", default=None)
    a.add_argument("--factor", type=float, default=None)
    a.add_argument("--window", type=int, default=None, help="trailing window in days")
    a.add_argument("--json", action="store_true", help="a JSON list (empty when there are none)")
    sub.add_parser("worker", help="run the worker role: migrations, Dramatiq worker and drain scheduler")
    r = sub.add_parser("rollup", help="recompute the daily rollup table of a period")
    r.add_argument("--period", required=True)
    return p


@contextmanager
def _output(name: str) -> Iterator[TextIO]:
    if name == "-":
        yield sys.stdout
    else:
        with open(name, "w", newline="") as fh:
            yield fh


@contextmanager
def _redis(settings: Settings) -> Iterator[redis.Redis | redis.RedisCluster]:
    client = settings.redis_client()  # a RedisCluster client when REDIS_CLUSTER is set
    try:
        yield client
    finally:
        client.close()


def cmd_drain(settings: Settings, args: argparse.Namespace) -> int:
    with _redis(settings) as client, ClickHouse(settings.clickhouse_url) as ch:
        bar = None
        if not args.quiet:
            bar = ProgressBar(redis_streams.backlog(client, usage_streams(settings.shards), settings.drain_group))
        stats = drain.drain_once(client, ch, settings, max_batches=args.max_batches,
                                 progress=(lambda s: bar.update(s.read)) if bar else None)
        if bar:
            bar.update(stats.read)
            bar.finish()
    print(orjson.dumps(stats.as_dict()).decode())
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    cluster = settings.clickhouse_cluster if args.cluster is None else args.cluster
    if args.print_only:
        for m, statements in migrate.render_all(settings.schema_dir, cluster):
            print(f"-- {m.name}")
            print(";\n\n".join(statements) + ";\n")
        return 0
    with ClickHouse(settings.clickhouse_url) as ch:
        report = migrate.migrate(ch, settings.schema_dir, cluster=cluster)
    for m in report.applied:
        print(f"applied {m.name}")
    print(f"{len(report.applied)} applied, {len(report.already_applied)} already applied")
    return 0


def _account_in_redis(client: redis.Redis | redis.RedisCluster, acct: str, shards: int) -> bool | None:
    """Whether the gateway knows the account (its hash exists); None when Redis cannot tell."""
    try:
        return bool(client.exists(AccountKeys(acct, shards).account))
    except redis.RedisError:
        return None


def _usage_report(settings: Settings, acct: str, period: str) -> dict[str, Any]:
    if not ID_RE.match(acct):
        raise InvalidArgument(f"{acct!r} is not an account id (4 to 32 lowercase letters or digits)")
    report: dict[str, Any] = {"account": acct, "period": period}
    with _redis(settings) as client:
        known = _account_in_redis(client, acct, settings.shards)
        try:
            live = current_usage(client, acct, period, settings.shards)
            report["current"] = asdict(live) | {"cost": format_money(live.cost_nanos)}
        except BillingWorkerError as exc:
            report["current"] = {"error": str(exc)}
    with ClickHouse(settings.clickhouse_url) as ch:
        if not known and not has_usage(ch, acct):
            where = f"not in Redis at {settings.redis_url}" if known is False else "Redis not reachable"
            raise InvalidArgument(f"unknown account {acct!r}: {where}, and no usage of it in ClickHouse")
        totals = account_totals(ch, period, acct)
        report["history"] = {
            "totals": line_record(totals[0]) if totals else None,
            "by_model": [line_record(x) for x in cost_by_model(ch, period, acct)],
            "by_day": [line_record(x) for x in usage_by_day(ch, period, acct)],
            "by_key": [line_record(x) for x in usage_by_key(ch, period, acct)],
            "anomalies": [asdict(x) for x in usage_anomalies(
                ch, period, acct, factor=settings.anomaly_factor, window_days=settings.anomaly_window_days,
                min_calls=settings.anomaly_min_calls)],
        }
    return report


def _print_text(report: dict[str, Any]) -> None:
    print(f"Account {report['account']}, period {report['period']}")
    cur = report["current"]
    if "error" in cur:
        print(f"  live counters unavailable: {cur['error']}")
    else:
        print(f"  live (Redis): {cur['used']} calls used, {cur['reserved']} reserved, {cur['overage']} overage; "
              f"tokens pt={cur['pt']} ct={cur['ct']} cached={cur['cached']} reasoning={cur['reasoning']}; "
              f"list cost {cur['cost']}")
        for model, c in cur["models"].items():
            print(f"    {model}: {c['calls']} calls, pt={c['pt']} ct={c['ct']}")
    hist = report["history"]
    t = hist["totals"]
    if t is None:
        print("  history (ClickHouse): no usage loaded")
        return
    print(f"  history (ClickHouse): {t['calls']} calls, pt={t['pt']} ct={t['ct']}, list cost {t['cost']}")
    for x in hist["by_model"]:
        print(f"    model {x['model']}: {x['calls']} calls, pt={x['pt']} ct={x['ct']}, cost {x['cost']}")
    for x in hist["by_key"]:
        print(f"    key {x['key_id']}: {x['calls']} calls, cost {x['cost']}")
    for x in hist["by_day"]:
        print(f"    {x['day']}: {x['calls']} calls, cost {x['cost']}")
    for x in hist["anomalies"]:
        print(f"  ANOMALY {x['day']}: {x['calls']} calls = {x['ratio']}x the trailing average {x['trailing_avg']}")


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    period = check_period(args.period or current_period())
    report = _usage_report(settings, args.account, period)
    if args.format == "json":
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        _print_text(report)
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    by = [g for g in args.by.split(",") if g]
    with ClickHouse(settings.clickhouse_url) as ch, _output(args.output) as out:
        count = export.export_usage(ch, check_period(args.period), args.format, out, acct=args.account, by=by)
    print(f"{count} lines exported", file=sys.stderr)
    return 0


def cmd_anomalies(settings: Settings, args: argparse.Namespace) -> int:
    with ClickHouse(settings.clickhouse_url) as ch:
        found = usage_anomalies(ch, check_period(args.period), args.account,
                                factor=args.factor or settings.anomaly_factor,
                                window_days=args.window or settings.anomaly_window_days,
                                min_calls=settings.anomaly_min_calls)
    if args.json:
        print(orjson.dumps([asdict(x) for x in found], default=str).decode())
        return 0
    if not found:
        print(f"no anomalies for {args.account + ' in ' if args.account else ''}{args.period}")
    for x in found:
        print(f"{x.acct}\t{x.day}\t{x.calls} calls\t{x.ratio}x trailing average {x.trailing_avg}")
    return 0


def cmd_rollup(settings: Settings, args: argparse.Namespace) -> int:
    with ClickHouse(settings.clickhouse_url) as ch:
        print(f"{rollup.refresh_daily_rollup(ch, check_period(args.period))} daily groups")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # the actors module reads its settings from the environment when imported: the same addresses
    os.environ.update({"REDIS_URL": settings.redis_url, "CLICKHOUSE_URL": settings.clickhouse_url})
    from billing_worker.embedded import run_worker
    return run_worker(settings)


COMMANDS = {"worker": cmd_worker, "drain": cmd_drain, "migrate": cmd_migrate, "usage": cmd_usage, "export": cmd_export,
            "anomalies": cmd_anomalies, "rollup": cmd_rollup}


USES_REDIS = ("worker", "drain", "usage")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        environ, source = stack_environ(os.environ)   # REDIS_URL, else a running `make up`, else defaults
        settings = Settings.from_env(environ)
        if args.command in USES_REDIS:
            print(f"billing_worker: using Redis {settings.redis_url} ({source})", file=sys.stderr)
        return COMMANDS[args.command](settings, args)
    except (ConfigError, InvalidArgument) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClickHouseUnavailable as exc:
        print(f"ClickHouse unavailable: {exc}", file=sys.stderr)
        return 3
    except BillingWorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

