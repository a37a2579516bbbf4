"""`aihub`: the one command. Roles (`up`, `serve`, `worker`), the system of record (`migrate`, `resync`),
admin commands (accounts, keys, plans, quotas, boosts, audit log) and the usage commands of the worker.

Every command that prints data prints text, or JSON with `--json`. Admin changes are written to the database
and projected to Redis (billing.accounts); when Redis is not reachable the change is saved and a warning says
that `aihub resync` applies it. Exit status: 0 done, 2 refused (bad input, unknown account, store unreachable).
The proxy's modules never import this one (it opens the database).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from gateway.errors import ConfigError, GatewayError
from gateway.runtime import stack_environ
from gateway.settings import Settings, environment

WORKER_COMMANDS = ("worker", "drain", "usage", "export", "anomalies", "rollup")   # billing_worker.cli


def _until(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--until {value!r} is not an ISO date or datetime (e.g. 2026-12-15)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _calls(value: str) -> int | None:
    if value == "default":
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"a custom quota is a whole number of calls or 'default', not {value!r}")
    return int(value)


def _int_arg(value: str) -> int:
    """A whole number written with ASCII digits (argparse turns the ValueError into a usage error)."""
    if not (value.lstrip("-").isascii() and value.lstrip("-").isdigit()) or len(value) > 19:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {value[:30]!r}")
    return int(value)


def _workers(value: str) -> int:
    count = _int_arg(value)
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"--workers is 1 to 64, not {count}")
    return count


def _text(value: Any, indent: str = "") -> list[str]:
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines += [f"{indent}{key}:", *_text(item, indent + "  ")]
            else:
                lines.append(f"{indent}{key}: {'' if item is None or item == [] else item}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            inner = _text(item, indent + "  ")
            lines += [f"{indent}- {inner[0].strip()}", *inner[1:]] if inner else [f"{indent}-"]
        return lines
    return [f"{indent}{value}"]


def emit(value: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write("\n".join(_text(value)) + "\n")


def warn_if_pending(projected: bool) -> None:
    if not projected:
        sys.stderr.write("aihub: warning: Redis was not updated (not reachable, or none configured); the change is "
                         "saved in the database, and the next `make up`, `aihub serve` or `aihub worker` start (or "
                         "`aihub resync` with REDIS_URL set) applies it.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aihub", description="AI Hub quota gateway and billing.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    command("up", "run everything on the embedded defaults (make up)")
    serve = command("serve", "run the gateway (proxy, health, metrics); projects the database into Redis first")
    serve.add_argument("--workers", type=_workers, default=1,
                       help="gateway processes on the one port (SO_REUSEPORT), each with its own Redis connection; "
                            "SIGTERM or Ctrl-C stops them all, requests in flight finished and settled (default 1)")
    for name in WORKER_COMMANDS:
        sub.add_parser(name, help=f"billing worker: {name} (see `aihub {name} --help`)", add_help=False)
    sub.add_parser("member", help="an account's members: add, list, remove, token (see `aihub member --help`)",
                   add_help=False)
    command("migrate", "apply the database and ClickHouse schema migrations")
    resync = command("resync", "rebuild Redis from the database (keys, plans, quotas, boosts)")
    resync.add_argument("--counters", action="store_true",
                        help="also rebuild this month's used calls and tokens from ClickHouse's usage rows")
    resync.add_argument("--prune", action="store_true", help="remove accounts Redis has and the database does not")
    create = command("create-account", "create an account and issue its first key (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", required=True)
    create.add_argument("--country", default="US", help="ISO 3166-1 alpha-2 code")
    create.add_argument("--region", default="", help="state or province code, e.g. CA")
    create.add_argument("--email", dest="billing_email")
    create.add_argument("--tax-id")
    create.add_argument("--currency", help="ISO 4217 code, fixed at creation (default: the catalog's)")
    create.add_argument("--language", default="en", choices=["en", "zh"], help="invoices and emails")
    create.add_argument("--id", dest="account_id")
    create.add_argument("--bank-transfer", action="store_true",
                        help="the account pays by bank transfer (a paid plan needs it, or a card added after "
                             "creating the account on the free plan)")
    command("list-accounts", "every account with its subscription")
    show = command("show-account", "one account, its subscription, boosts and keys")
    show.add_argument("account")
    issue = command("issue-key", "issue a new API key (shown once)")
    issue.add_argument("account")
    issue.add_argument("--name", default="default")
    revoke = command("revoke-key", "revoke an API key (refused at once)")
    revoke.add_argument("account")
    revoke.add_argument("key_id")
    plan = command("set-plan", "change the plan: upgrades at once, downgrades at the start of the next period")
    plan.add_argument("account")
    plan.add_argument("plan")
    plan.add_argument("--now", action="store_true", help="apply a downgrade at once")
    cancel = command("cancel", "cancel the paid plan at the end of the period (the account moves to the free plan)")
    cancel.add_argument("account")
    unschedule = command("unschedule", "cancel a scheduled plan change")
    unschedule.add_argument("account")
    quota = command("set-quota", "custom monthly calls quota (plans that allow it), or 'default'")
    quota.add_argument("account")
    quota.add_argument("calls")
    overage = command("set-overage", "pay-as-you-go overage on or off (plans that offer it)")
    overage.add_argument("account")
    overage.add_argument("state", choices=["on", "off"])
    language = command("set-language", "the language of the account's invoices and emails")
    language.add_argument("account")
    language.add_argument("language", choices=["en", "zh"])
    status = command("set-status", "suspend or reactivate an account")
    status.add_argument("account")
    status.add_argument("status", choices=["active", "suspended"])
    boost = command("boost", "grant extra calls until a date")
    boost.add_argument("account")
    boost.add_argument("--calls", type=_int_arg, required=True)
    boost.add_argument("--until", required=True, help="ISO date or datetime (UTC)")
    boost.add_argument("--price-minor", type=_int_arg, help="price in minor units of the account's currency, if sold")
    close = command("close-period", "issue the invoices of an ended month (idempotent), e.g. 2026-11")
    close.add_argument("period")
    invoice = sub.add_parser("invoice", help="invoices: list, show, export, pdf")
    isub = invoice.add_subparsers(dest="invoice_command", required=True, metavar="ACTION")
    ilist = isub.add_parser("list", help="an account's invoices, newest first")
    ilist.add_argument("account")
    ishow = isub.add_parser("show", help="one invoice with its lines and usage summary")
    ishow.add_argument("number")
    iexport = isub.add_parser("export", help="a period's invoices as CSV (one row per line) or JSON")
    iexport.add_argument("--period", required=True)
    iexport.add_argument("--format", choices=("csv", "json"), default="csv")
    istatus = isub.add_parser("set-status", help="void an invoice, mark it uncollectible, or paid (bank transfer)")
    istatus.add_argument("number")
    istatus.add_argument("status", choices=["paid", "void", "uncollectible"])
    ipay = isub.add_parser("pay", help="charge an open invoice now with the account's default payment method")
    ipay.add_argument("number")
    imark = isub.add_parser("mark-paid", help="record the bank transfer that paid an invoice")
    imark.add_argument("number")
    imark.add_argument("--reference", required=True, help="the transfer's bank reference")
    irefund = isub.add_parser("refund", help="refund a paid invoice in full or in part (issues a credit note)")
    irefund.add_argument("number")
    irefund.add_argument("--amount-minor", type=_int_arg, required=True)
    irefund.add_argument("--reason", default="")
    ipdf = isub.add_parser("pdf", help="render an invoice as PDF (the account's language)")
    ipdf.add_argument("number")
    ipdf.add_argument("-o", "--output", help="file to write (default: <number>.pdf)")
    for p in (ilist, ishow, ipdf, istatus, ipay, imark, irefund):
        p.add_argument("--json", action="store_true", help="print JSON")
    iexport.add_argument("--json", action="store_true", help="same as --format json")
    report = sub.add_parser("report", help="reports: revenue by month, month-end forecast")
    rsub = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    rrevenue = rsub.add_parser("revenue", help="MRR, ARR, invoiced revenue, tax, paid vs open, conversion, churn")
    rrevenue.add_argument("--from", dest="from_period", required=True, help="first month, YYYY-MM")
    rrevenue.add_argument("--to", dest="to_period", required=True, help="last month, YYYY-MM")
    rforecast = rsub.add_parser("forecast", help="month-end forecast of the current period (reads ClickHouse)")
    rforecast.add_argument("--account", help="one account (default: every account and the business)")
    rforecast.add_argument("--at", help="forecast as of this UTC time (ISO; default: now)")
    for p in (rrevenue, rforecast):
        p.add_argument("--json", action="store_true", help="print JSON")
    method = sub.add_parser("payment-method", help="an account's payment methods: add, bank-transfer, list")
    msub = method.add_subparsers(dest="method_command", required=True, metavar="ACTION")
    madd = msub.add_parser("add", help="attach a provider's payment method (e.g. pm_... from a SetupIntent)")
    madd.add_argument("account")
    madd.add_argument("method_id")
    madd.add_argument("--provider", choices=["stripe", "paypal"], default="stripe")
    mbank = msub.add_parser("bank-transfer", help="let the account pay its invoices by bank transfer")
    mbank.add_argument("account")
    mlist = msub.add_parser("list", help="the account's payment methods (brand and last 4 digits at most)")
    mlist.add_argument("account")
    for p in (madd, mbank, mlist):
        p.add_argument("--json", action="store_true", help="print JSON")
    phist = command("payments", "an account's payment history: attempts and their states, refunds, credit notes")
    phist.add_argument("account")
    audit = command("audit-log", "the newest admin actions")
    audit.add_argument("--account")
    audit.add_argument("--limit", type=_int_arg, default=50)
    notes = command("notifications", "an account's notifications, newest first, with their delivery states")
    notes.add_argument("account")
    notes.add_argument("--limit", type=int, default=50)
    webhook = command("set-webhook", "set the account's webhook URL (prints its signing secret once), or --off")
    webhook.add_argument("account")
    webhook.add_argument("url", nargs="?")
    webhook.add_argument("--off", action="store_true", help="turn the webhook off")
    return parser


def run_admin(args: argparse.Namespace, environ: Mapping[str, str], redis_known: bool = True) -> None:
    """`redis_known` False: neither REDIS_URL nor a running stack names a Redis, so changes are saved in the
    database only (projecting into whatever listens on the default port could feed another project's Redis)."""
    from billing.store import open_accounts
    if not redis_known and args.command == "resync":
        raise GatewayError("No Redis to resync into: set REDIS_URL, or start `make up` (it resyncs at start).")
    store = open_accounts(environ, project=redis_known)
    try:
        _admin(args, store, environ)
    finally:
        store.close()


def _admin(args: argparse.Namespace, store: Any, environ: Mapping[str, str]) -> None:
    accounts = store.accounts
    out = args.json
    if args.command == "migrate":
        from billing.db.migrate import head
        from billing_worker.clickhouse import ClickHouse
        from billing_worker.errors import BillingWorkerError
        from billing_worker.migrate import migrate as migrate_clickhouse
        from billing_worker.settings import Settings as WorkerSettings
        worker = WorkerSettings.from_env(environ)
        try:
            with ClickHouse(worker.clickhouse_url) as ch:
                report = migrate_clickhouse(ch, worker.schema_dir, cluster=worker.clickhouse_cluster)
        except BillingWorkerError as exc:
            raise GatewayError(f"the database is migrated (revision {head()}) but not ClickHouse: {exc}. With "
                               "embedded chDB only one process may open it: stop `make up` first (it migrates "
                               "both at start), or use a ClickHouse server.") from None
        emit({"database": {"revision": head()},
              "clickhouse": {"applied": [m.name for m in report.applied],
                             "already_applied": [m.name for m in report.already_applied]}}, out)
    elif args.command == "resync":
        report = store.resync(prune=args.prune)
        result: dict[str, Any] = {"projected": report.projected, "overwritten": report.overwritten,
                                  "newer_in_redis": report.newer_in_redis,
                                  "orphans": report.orphans, "pruned": report.pruned}
        if args.counters:
            from billing_worker.counters import rebuild_all_counters
            from billing_worker.errors import BillingWorkerError
            try:
                result["counters"] = rebuild_all_counters(dict(environ))
            except BillingWorkerError as exc:
                raise GatewayError(f"the projection was rebuilt ({report.projected} accounts) but not the counters: "
                                   f"{exc}. With embedded chDB only one process may open it: stop `make up` "
                                   "first, or use a ClickHouse server.") from None
        emit(result, out)
    elif args.command == "create-account":
        change = accounts.create_account(args.name, args.plan, country=args.country, region=args.region,
                                         billing_email=args.billing_email, tax_id=args.tax_id,
                                         currency=args.currency, language=args.language,
                                         account_id=args.account_id, bank_transfer=args.bank_transfer, actor="cli")
        issued, projected = accounts.issue_key(change.account["id"], actor="cli")
        warn_if_pending(projected)
        emit({"account": issued.account_id, "plan": args.plan, "key_id": issued.key_id, "api_key": issued.api_key},
             out)
    elif args.command == "list-accounts":
        emit(accounts.list_accounts(), out)
    elif args.command == "show-account":
        emit(accounts.get_account(args.account) | {"keys": accounts.list_keys(args.account)}, out)
    elif args.command == "issue-key":
        issued, projected = accounts.issue_key(args.account, args.name, actor="cli")
        warn_if_pending(projected)
        emit({"account": issued.account_id, "key_id": issued.key_id, "api_key": issued.api_key}, out)
    elif args.command == "close-period":
        emit(_close_period(store, args.period, environ), out)
    elif args.command == "invoice":
        _invoice(args, store, environ)
    elif args.command == "report":
        from billing_worker.reports_cli import run_report
        emit(run_report(args, store, environ), out)
    elif args.command in ("payment-method", "payments"):
        from billing_worker.payments import services
        payments, _ = services(store, environ)
        if args.command == "payments":       # unknown account: NotFound, exit 2
            emit(payments.statement(args.account), out)
        elif args.method_command == "add":
            emit(payments.add_payment_method(args.account, args.method_id, provider=args.provider, actor="cli"), out)
        elif args.method_command == "bank-transfer":
            emit(payments.enable_bank_transfer(args.account, actor="cli"), out)
        else:
            emit(payments.payment_methods(args.account), out)
    elif args.command == "audit-log":
        emit(accounts.audit_log(args.account, args.limit), out)
    elif args.command in ("notifications", "set-webhook"):
        _notifications(args, accounts)
    elif args.command == "boost":
        boost_id, change = accounts.add_boost(args.account, args.calls, _until(args.until),
                                              price_minor=args.price_minor, actor="cli")
        warn_if_pending(change.projected)
        emit({"boost": boost_id, "calls": args.calls, "until": args.until}, out)
    else:
        change = {
            "revoke-key": lambda: accounts.revoke_key(args.account, args.key_id, actor="cli"),
            "set-plan": lambda: accounts.set_plan(args.account, args.plan, now=args.now, actor="cli"),
            "cancel": lambda: accounts.cancel(args.account, actor="cli"),
            "unschedule": lambda: accounts.cancel_scheduled_change(args.account, actor="cli"),
            "set-quota": lambda: accounts.set_custom_quota(args.account, _calls(args.calls), actor="cli"),
            "set-overage": lambda: accounts.set_overage(args.account, args.state == "on", actor="cli"),
            "set-status": lambda: accounts.set_status(args.account, args.status, actor="cli"),
            "set-language": lambda: accounts.set_language(args.account, args.language, actor="cli"),
        }[args.command]()
        warn_if_pending(change.projected)
        emit(change.account, out)


def _close_period(store: Any, period: str, environ: Mapping[str, str]) -> dict[str, Any]:
    from billing_worker.clickhouse import ClickHouse
    from billing_worker.close import close
    from billing_worker.progress import ProgressBar
    from billing_worker.settings import Settings as WorkerSettings
    bar: ProgressBar | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = ProgressBar(total, "accounts")
        bar.update(done)

    from billing.invoicing import parse_period
    from billing_worker.errors import BillingWorkerError
    parse_period(period)
    try:
        with ClickHouse(WorkerSettings.from_env(environ).clickhouse_url) as ch:
            report = close(store, ch, period, environ, progress)
    except BillingWorkerError as exc:
        raise GatewayError(f"ClickHouse: {str(exc).splitlines()[0][:300]}. Run `aihub migrate` on a new install; "
                           "with embedded chDB only one process may open it (stop `make up`, or let its worker "
                           "close the month).") from None
    if bar is not None:
        bar.finish()
    return {"period": report.period, "issued": len(report.issued), "already_issued": report.existing,
            "numbers": report.issued, "total_minor_by_currency": report.total_minor_by_currency}


def _invoice(args: argparse.Namespace, store: Any, environ: Mapping[str, str]) -> None:
    from billing_worker.close import invoicer_for
    invoicer = invoicer_for(store, environ)
    if args.invoice_command == "list":
        rows = [{k: i[k] for k in ("number", "period", "status", "currency", "total_minor", "issued_at", "due_at")}
                for i in invoicer.history(args.account)]
        emit(rows, args.json)
    elif args.invoice_command == "show":
        emit(invoicer.get(args.number), args.json)
    elif args.invoice_command in ("pay", "mark-paid", "refund"):
        from billing_worker.payments import services
        payments, _ = services(store, environ)
        if args.invoice_command == "pay":
            emit(payments.charge_invoice(args.number), args.json)
        elif args.invoice_command == "mark-paid":
            emit(payments.mark_paid_by_bank_transfer(args.number, args.reference, actor="cli"), args.json)
        else:
            emit(payments.refund(args.number, args.amount_minor, reason=args.reason, actor="cli"), args.json)
    elif args.invoice_command == "set-status":
        emit(invoicer.set_status(args.number, args.status, actor="cli"), args.json)
    elif args.invoice_command == "export":
        invoices = invoicer.for_period(args.period)
        if args.format == "json" or args.json:
            emit(invoices, True)
            return
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(["number", "account", "period", "status", "currency", "line", "kind", "description",
                         "quantity", "unit_amount_minor", "amount_minor", "subtotal_minor", "tax_minor",
                         "total_minor"])
        for inv in invoices:
            for n, line in enumerate(inv["lines"], 1):
                writer.writerow([inv["number"], inv["account"], inv["period"], inv["status"], inv["currency"], n,
                                 line["kind"], line["description"], line["quantity"], line["unit_amount_minor"],
                                 line["amount_minor"], inv["subtotal_minor"], inv["tax"]["amount_minor"],
                                 inv["total_minor"]])
    elif args.invoice_command == "pdf":
        from pathlib import Path

        from billing.pdf import render_invoice_pdf
        invoice = invoicer.get(args.number)
        path = Path(args.output or f"{args.number}.pdf")
        if path.is_dir() or not path.parent.is_dir():
            raise GatewayError(f"cannot write {path}: give a file name in an existing directory (-o)")
        path.write_bytes(render_invoice_pdf(invoice, str(invoice["language"])))
        emit({"number": args.number, "pdf": str(path), "bytes": path.stat().st_size}, args.json)


def _notifications(args: argparse.Namespace, accounts: Any) -> None:
    """`aihub notifications` and `aihub set-webhook` (billing.notifications)."""
    if args.command == "notifications":
        from billing.notifications import history
        accounts.get_account(args.account)          # NotFound for an unknown account
        emit(history(accounts.sessions, args.account, args.limit), args.json)
        return
    if args.off == (args.url is not None):
        raise ValueError("give either a webhook URL or --off")
    secret = accounts.set_webhook(args.account, None if args.off else args.url, actor="cli")
    result: dict[str, Any] = {"account": args.account, "webhook_url": None if args.off else args.url}
    if secret is not None:
        result["signing_secret"] = secret
        sys.stderr.write("aihub: the signing secret is shown once; verify X-AIHub-Signature with it "
                         "(HMAC-SHA256 over \"<timestamp>.<body>\").\n")
    emit(result, args.json)


def resync_at_start(environ: Mapping[str, str]) -> None:
    """A starting role projects the database into Redis (changes made while Redis was down are applied);
    when the database cannot be reached it says so and the role starts on what Redis holds."""
    from billing.errors import BillingError
    from billing.store import open_accounts
    try:
        store = open_accounts(environ)
    except BillingError as exc:
        sys.stderr.write(f"aihub: warning: no resync at start: {exc.message}\n")
        return
    try:
        report = store.resync()
        sys.stderr.write(f"aihub: projected {report.projected + report.overwritten} accounts from the database into "
                         "Redis\n")
        if report.orphans:
            sys.stderr.write(f"aihub: warning: Redis has {len(report.orphans)} accounts the database does not know "
                             f"({', '.join(report.orphans[:5])}{', ...' if len(report.orphans) > 5 else ''}); "
                             "`aihub resync --prune` takes them out of service\n")
    except BillingError as exc:
        sys.stderr.write(f"aihub: warning: no resync at start: {exc.message}\n")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in WORKER_COMMANDS:
        from billing_worker.cli import main as worker_main
        return worker_main(argv)
    if argv and argv[0] == "member":
        from api.cli import main as member_main
        return member_main(argv[1:])
    args = build_parser().parse_args(argv)
    from billing.errors import BillingError
    try:
        if args.command == "serve":
            settings = Settings.from_env()
            from gateway.catalog import load_catalog
            from gateway.upstream import Upstreams
            Upstreams(settings, load_catalog(settings.catalog_path).upstreams)   # before anything changes; one line
            resync_at_start(environment())                                     # here, not one per worker
            if args.workers > 1:
                from gateway.workers import supervise
                return supervise(args.workers, settings.shutdown_grace_s)
            from gateway.server import serve
            serve(settings)
        elif args.command == "up":
            from gateway.stack import run_stack
            run_stack()
        else:
            environ, source = stack_environ(environment())
            settings = Settings.from_env(environ)
            redis_known = not source.startswith("default")
            if redis_known:
                sys.stderr.write(f"aihub: using Redis {settings.redis_url} ({source})\n")
            else:
                sys.stderr.write(f"aihub: no Redis updated ({source}); changes are saved in the database\n")
            run_admin(args, environ, redis_known)
    except (ConfigError, GatewayError, BillingError, ValueError) as exc:
        sys.stderr.write(f"aihub: {getattr(exc, 'message', None) or exc}\n")
        return 2
    except redis.RedisError as exc:
        sys.stderr.write(f"aihub: Redis is not reachable ({exc}); is REDIS_URL right?\n")
        return 2
    except KeyboardInterrupt:      # Ctrl-C: everything started has been stopped on the way out
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
