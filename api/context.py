"""What the management API's handlers work with: the system of record's services, ClickHouse (usage history; one
shared client behind a lock, since chDB allows one owner per process) and the settings. Built once per process by
`open_context(environ)`; handlers reach it through `request.app.state.ctx`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api.errors import ApiError
from api.settings import ApiSettings
from billing.accounts import AccountService
from billing.invoicing import Invoicer
from billing.members import MemberService
from billing.payments.service import PaymentService
from billing.store import Store

log = logging.getLogger("aihub.api")


@dataclass
class ApiContext:
    store: Store
    payments: PaymentService
    members: MemberService
    settings: ApiSettings
    clickhouse_factory: Callable[[], Any] | None = None      # () -> billing_worker.clickhouse.ClickHouse
    clock: Callable[[], float] = time.time
    _ch_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def accounts(self) -> AccountService:
        return self.store.accounts

    @property
    def invoicer(self) -> Invoicer:
        return self.payments.invoicer

    @property
    def sessions(self) -> Any:
        return self.store.accounts.sessions

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    @contextmanager
    def clickhouse(self) -> Iterator[Any]:
        """The ClickHouse client, one caller at a time; 503 `usage_history_unavailable` when none is configured or
        it cannot be reached."""
        if self.clickhouse_factory is None:
            raise ApiError(503, "usage_history_unavailable", "Usage history (ClickHouse) is not available here.")
        from billing_worker.errors import ClickHouseError
        with self._ch_lock:
            try:
                yield self.clickhouse_factory()
            except ClickHouseError:
                log.exception("usage history (ClickHouse) failed")
                raise ApiError(503, "usage_history_unavailable", "Usage history is not available right now; the "
                               "error was logged. Retry later.") from None


def open_context(environ: Mapping[str, str], store: Store | None = None,
                 clickhouse_factory: Callable[[], Any] | None = None) -> ApiContext:
    """The API's context on the given store (or one opened from `environ`)."""
    from billing.store import open_accounts
    from billing_worker.payments import services
    store = store or open_accounts(environ)
    payments, _ = services(store, environ)
    members = MemberService(store.accounts.sessions, clock=store.accounts.clock)
    return ApiContext(store, payments, members, ApiSettings.from_env(environ), clickhouse_factory,
                      clock=store.accounts.clock)
