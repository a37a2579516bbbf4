"""One pipelined Redis connection for the hot path: a tick's commands are written in one write, replies are
matched to their futures in order as they arrive (RESP keeps the order).

Packing and parsing are hiredis (`pack_command`, `Reader`); there is no task, pool or lock per call. A reply
later than `timeout_s` aborts the connection: its pending calls fail with a redis-py TimeoutError or
ConnectionError (RedisError both, so the engine's one failure policy applies); the next call reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser  # redis-py's own error-reply mapping
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout


def _error(reply: hiredis.ReplyError) -> Exception:
    """The redis-py exception for an error reply (NOSCRIPT, LOADING, READONLY, ... as redis-py maps them)."""
    exc: Exception = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return exc


class _Connection(asyncio.Protocol):
    """One TCP connection; its pending futures are failed when it is lost or times out."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def send(self, packed: list[bytes]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in packed]
        if self.transport is None or self.transport.is_closing():
            for future in futures:
                future.set_exception(RedisConnectionError("not connected to Redis"))
            return futures
        now = time.monotonic()
        self.pending.extend((future, now) for future in futures)
        self.transport.write(b"".join(packed))
        if self._timer is None:
            self._timer = loop.call_later(self.timeout_s, self._check_timeout)
        return futures

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.pending:            # a reply nobody waits for: out of step, start afresh
                self.close()
                return
            future, _ = self.pending.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.pending:
            return
        waited = time.monotonic() - self.pending[0][1]
        if waited >= self.timeout_s:
            self.fail(RedisTimeout(f"no reply from Redis within {self.timeout_s}s"))
            self.close()
            return
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s - waited, self._check_timeout)

    def fail(self, exc: Exception) -> None:
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        self.transport = None


class RespPipe:
    """The current connection, opened on demand; `send` needs `await connect()` to have succeeded."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.options = parse_url(url)
        self.timeout_s = timeout_s
        self.connection: _Connection | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.open

    def send(self, packed: list[bytes]) -> list[asyncio.Future[Any]]:
        connection = self.connection if self.connection is not None else _Connection(self.timeout_s)
        return connection.send(packed)

    async def connect(self) -> None:
        if self.connected:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connected:
                return
            connection = _Connection(self.timeout_s)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.get_running_loop().create_connection(
                        lambda: connection, self.options.get("host", "127.0.0.1"), self.options.get("port", 6379))
                    for reply in await asyncio.gather(*connection.send(self._setup()), return_exceptions=True):
                        if isinstance(reply, BaseException):
                            raise reply
            except TimeoutError:
                connection.close()
                raise RedisTimeout(f"could not connect to Redis within {self.timeout_s}s") from None
            except OSError as exc:
                connection.close()
                raise RedisConnectionError(f"could not connect to Redis: {exc}") from None
            except BaseException:
                connection.close()
                raise
            self.connection = connection

    def _setup(self) -> list[bytes]:
        commands: list[tuple[Any, ...]] = []
        if self.options.get("password"):
            credentials = [v for v in (self.options.get("username"), self.options["password"]) if v]
            commands.append(("AUTH", *credentials))
        if self.options.get("db"):
            commands.append(("SELECT", self.options["db"]))
        return [hiredis.pack_command(c) for c in commands]

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None
