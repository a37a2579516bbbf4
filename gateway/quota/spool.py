"""A local append-only spool of settles that Redis could not take; replayed exactly once when it returns.

Each line is one settle.lua call as JSON, written and fsynced before the settle is considered done.
Every process writes its own file; replay takes a file only when it can lock it, so a file of a dead
process is replayed by whichever process gets to it first. Exactly-once comes from settle.lua's done
marker: a crash half-way through a replay replays the file again without double counting.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import orjson
from redis.exceptions import ResponseError

log = logging.getLogger("aihub.spool")
Sender = Callable[[list[str], list[Any]], Awaitable[None]]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._lock = threading.Lock()
        self.pending = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"spool-{os.getpid()}-{time.time_ns()}.jsonl"
            self._file = open(self._path, "ab")  # noqa: SIM115 - kept open while spooling
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self._file

    @staticmethod
    def _write(handle: IO[bytes], keys: list[str], args: list[Any], **extra: str) -> None:
        """One settle call as a JSON line, on disk (fsynced) before this returns."""
        handle.write(orjson.dumps({"keys": keys, "args": [str(a) for a in args], **extra}) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())

    def append(self, keys: list[str], args: list[Any]) -> None:
        with self._lock:
            self._write(self._open(), keys, args)
            self.pending += 1

    def append_rejected(self, keys: list[str], args: list[Any], reason: str) -> None:
        """A settle Redis refused as malformed: kept for a person, never replayed automatically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.directory / "rejected.jsonl", "ab") as handle:
            self._write(handle, keys, args, reason=reason)

    def _rotate(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("spool-*.jsonl")) if self.directory.exists() else []

    async def replay(self, send: Sender) -> int:
        """Replays every unlocked spool file; returns the number of settles sent. Raises if Redis fails."""
        if not self.files():
            return 0
        self._rotate()
        sent = 0
        for path in self.files():
            try:
                handle = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue   # another process is writing or replaying it
                for raw in handle:
                    if not raw.strip():
                        continue
                    try:
                        entry = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        log.error("skipping a torn spool line in %s", path)  # a crash mid-write
                        continue
                    try:
                        await send(entry["keys"], entry["args"])
                    except ResponseError as exc:
                        if type(exc) is not ResponseError:   # NOSCRIPT, LOADING, ...: try again later
                            raise
                        self.append_rejected(entry["keys"], entry["args"], str(exc))
                    sent += 1
                path.unlink()
        self.pending = 0
        return sent

    def close(self) -> None:
        self._rotate()
