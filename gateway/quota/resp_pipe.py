"""One pipelined Redis connection for the hot path: a tick's commands are written in one write, replies are
handed to their handlers in order as they arrive (RESP keeps the order).

Packing and parsing are hiredis (`pack_command`, `Reader`); there is no task, pool, lock or future per call:
each command's handler is called with `(reply, None)` or `(None, exception)` straight from `data_received`.
A reply later than `timeout_s` aborts the connection: its pending calls fail with a redis-py TimeoutError or
ConnectionError (RedisError both, so the engine's one failure policy applies); the next call reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser  # redis-py's own error-reply mapping
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

log = logging.getLogger("aihub.quota")
Handler = Callable[[Any, BaseException | None], None]   # (reply, None) or (None, error)


def _call(handler: Handler, reply: Any, error: BaseException | None) -> None:
    try:
        handler(reply, error)
    except Exception:                       # a bug in a handler must not stall the replies behind it
        log.exception("reply handler failed")


def _error(reply: hiredis.ReplyError) -> Exception:
    """The redis-py exception for an error reply (NOSCRIPT, LOADING, READONLY, ... as redis-py maps them)."""
    exc: Exception = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return exc


class _Connection(asyncio.Protocol):
    """One TCP connection; its pending handlers are given an error when it is lost or times out."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: collections.deque[tuple[Handler, float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def send(self, packed: list[bytes], handlers: list[Handler]) -> None:
        loop = asyncio.get_running_loop()
        if self.transport is None or self.transport.is_closing():
            error = RedisConnectionError("not connected to Redis")
            for handler in handlers:                 # later: the caller is still writing
                loop.call_soon(handler, None, error)
            return
        now = time.monotonic()
        self.pending.extend((handler, now) for handler in handlers)
        self.transport.write(b"".join(packed))
        if self._timer is None:
            self._timer = loop.call_later(self.timeout_s, self._check_timeout)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.pending:            # a reply nobody waits for: out of step, start afresh
                self.close()
                return
            handler, _ = self.pending.popleft()
            if isinstance(reply, hiredis.ReplyError):
                _call(handler, None, _error(reply))
            else:
                _call(handler, reply, None)

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
            handler, _ = self.pending.popleft()
            _call(handler, None, exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        self.transport = None


async def _replies(connection: _Connection, packed: list[bytes]) -> list[Any]:
    """Sends the commands and waits for their replies; the first error reply is raised."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in packed]

    def handler(future: asyncio.Future[Any]) -> Handler:
        def done(reply: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(reply)
            else:
                future.set_exception(error)
        return done

    connection.send(packed, [handler(future) for future in futures])
    replies = await asyncio.gather(*futures, return_exceptions=True)
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return list(replies)


class RespPipe:
    """The current connection, opened on demand; `send` needs `await connect()` to have succeeded.

    `url` gives the credentials and database; `host`/`port` override its address (a cluster node)."""

    def __init__(self, url: str, timeout_s: float, host: str | None = None, port: int | None = None) -> None:
        self.options = parse_url(url)
        if host is not None:
            self.options["host"] = host
        if port is not None:
            self.options["port"] = port
        self.timeout_s = timeout_s
        self.connection: _Connection | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.open

    @property
    def idle(self) -> bool:
        """No reply awaited and no connection being opened: closing it loses nothing."""
        connecting = self._lock is not None and self._lock.locked()
        return not connecting and not (self.connection is not None and self.connection.pending)

    def send(self, packed: list[bytes], handlers: list[Handler]) -> None:
        """Writes the commands at once; `handlers[i]` gets the reply to `packed[i]`."""
        connection = self.connection if self.connection is not None else _Connection(self.timeout_s)
        connection.send(packed, handlers)

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
                    await _replies(connection, self._setup())
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
