"""The worker role's periodic threads that need the system of record (last-used sync, the monthly close check,
notifications): one base for the lazy open, the warn-once, the loop and the clean stop."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def open_store() -> Any:
    from billing.store import open_accounts
    return open_accounts()


class StoreThread(threading.Thread):
    """Calls `work(store)` every `interval_s` until stopped (also once at start with `run_first`, and once more at
    the stop with `final_tick`). The store (`opener()`, default billing.store.open_accounts: a Store with `.redis`,
    `.accounts`, `.projector`) is opened in this thread on first use; when it cannot be opened a warning naming
    `purpose` is logged once and the tick is skipped (the next one tries again). An error in `work` is logged and
    the loop goes on. `tick()` runs one round and returns what `work` returned, or None without a store."""

    purpose = "the periodic work"

    def __init__(self, name: str, interval_s: float, opener: Callable[[], Any] | None = None, *,
                 run_first: bool = False, final_tick: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.opener = opener or open_store
        self.run_first = run_first
        self.final_tick = final_tick
        self.stopped = threading.Event()
        self.store: Any = None
        self.warned: set[str] = set()

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)

    def open(self) -> Any:
        if self.store is None:
            try:
                self.store = self.opener()
            except Exception as exc:
                self.warn_once("open", "%s: not done, the accounts database cannot be opened: %s", self.purpose, exc)
                return None
        return self.store

    def work(self, store: Any) -> Any:
        raise NotImplementedError

    def tick(self) -> Any:
        store = self.open()
        return None if store is None else self.work(store)

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:           # Redis restarting, database busy, broker away: the next tick tries again
            log.warning("%s failed", self.purpose, exc_info=True)

    def run(self) -> None:
        try:
            if self.run_first:
                self._safe_tick()
            while not self.stopped.wait(self.interval_s):
                self._safe_tick()
            if self.final_tick and self.store is not None:
                self._safe_tick()
        finally:
            if self.store is not None:
                with contextlib.suppress(Exception):
                    self.store.close()
                self.store = None

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
