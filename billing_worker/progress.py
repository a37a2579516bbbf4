"""A small hand-written progress bar for the CLI (stderr; redrawn in place on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str = "rows", out: TextIO | None = None, width: int = 30,
                 min_interval_s: float = 0.1) -> None:
        self.total = max(total, 0)
        self.label = label
        self.out = out or sys.stderr
        self.width = width
        self.tty = self.out.isatty()
        self.min_interval_s = min_interval_s if self.tty else 2.0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self.done = 0

    def render(self, done: int) -> str:
        total = max(self.total, done)
        filled = self.width if total == 0 else self.width * done // total
        elapsed = max(time.monotonic() - self.started, 1e-9)
        pct = 100.0 if total == 0 else 100.0 * done / total
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {done:,}/{total:,} {self.label} "
                f"{pct:5.1f}% {done / elapsed:,.0f} {self.label}/s")

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval_s:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        self.out.write(("\r" if self.tty else "") + self.render(self.done) + ("" if self.tty else "\n"))
        self.out.flush()

    def finish(self) -> None:
        self._draw()
        if self.tty:
            self.out.write("\n")
            self.out.flush()
