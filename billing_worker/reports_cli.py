"""`aihub report revenue` and `aihub report forecast`: the glue between gateway.cli and the report functions
(billing.reports, billing_worker.forecast). The forecast reads ClickHouse: with embedded chDB only one process may
open it, so run it while `make up` is stopped (as `aihub close-period`), or use a ClickHouse server."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from billing.errors import InvalidInput


def _moment(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--at {value!r} is not an ISO date or datetime (e.g. 2026-11-11T00:00:00)",
                           code="bad_time") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not datetime(2000, 1, 1, tzinfo=UTC) <= moment < datetime(2099, 12, 1, tzinfo=UTC):
        raise InvalidInput("--at must lie between 2000-01-01 and 2099-11-30.", code="bad_time")
    return moment


def run_report(args: argparse.Namespace, store: Any, environ: Mapping[str, str]) -> Any:
    """The report asked for by `args.report_command`, as plain data for `emit`."""
    if args.report_command == "revenue":
        from billing.reports import revenue_report
        accounts = store.accounts
        return [month.to_dict() for month in revenue_report(accounts.sessions, accounts.catalog,
                                                            args.from_period, args.to_period)]
    from billing_worker.clickhouse import ClickHouse
    from billing_worker.close import invoicer_for
    from billing_worker.errors import BillingWorkerError
    from billing_worker.forecast import forecast
    from billing_worker.settings import Settings as WorkerSettings
    invoicer = invoicer_for(store, environ)
    now = _moment(args.at)
    try:
        with ClickHouse(WorkerSettings.from_env(environ).clickhouse_url) as ch:
            result = forecast(invoicer, ch, now, args.account)
    except BillingWorkerError as exc:
        raise InvalidInput(f"ClickHouse could not be read: {exc}. With embedded chDB only one process may open "
                           "it: stop `make up` first, or use a ClickHouse server.", code="clickhouse") from None
    return result.to_dict()
