"""Coalesces script calls made in the same event-loop tick into one round trip per Redis server.

`Coalescer` is the tick queue both batchers share: `call` queues, one `call_soon` flushes the tick, every
call is finished exactly once (`drain` waits for that). `submit` (the settles: nobody waits for them) queues the
same way, with a callback instead of a future. `ScriptBatcher` is the single Redis: a tick's calls
are packed with hiredis and written at once on one pipelined connection (`RespPipe`): no task, pool
checkout or lock per call; replies resolve the futures in order. redis-py's pipelines were the gateway's
largest quota cost. On a Redis Cluster, `ClusterBatcher` (cluster_batcher.py) does the same per primary.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import hiredis
from redis.exceptions import NoScriptError

from gateway.quota.resp_pipe import RespPipe

log = logging.getLogger("aihub.quota")


Done = Callable[[Any, BaseException | None], None]    # (reply, None) or (None, error): a call's outcome


class Call:
    """One script call, with the cluster's routing state: the node it goes to next or went to last (`addr`,
    empty: by the slot map), ASKING before it, NOSCRIPT handled, redirections followed, TRYAGAIN retries.
    Its outcome goes to `future` (`Coalescer.call`) or to `done` (`Coalescer.submit`: no future, no task wake-up)."""

    __slots__ = ("addr", "args", "asking", "deadline", "done", "future", "keys", "redirects", "reload", "reloaded",
                 "retries", "script")

    def __init__(self, script: Any, keys: list[str], args: list[Any], future: asyncio.Future[Any] | None,
                 done: Done | None = None) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        self.done = done
        self.addr = ""
        self.asking = False
        self.reload = False       # write SCRIPT LOAD before the next send (NOSCRIPT seen)
        self.reloaded = False     # NOSCRIPT already handled once
        self.redirects = 0        # MOVED/ASK followed since the last TRYAGAIN
        self.retries = 0          # TRYAGAIN retries
        self.deadline = 0.0       # no TRYAGAIN retry after this (monotonic; set by the first one)

    @property
    def waited_for(self) -> bool:
        """False once the caller stopped waiting (its future cancelled); a `submit` call is always waited for."""
        return self.future is None or not self.future.done()

    def packed(self) -> bytes:
        packed: bytes = hiredis.pack_command(("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args))
        return packed


class Coalescer:
    """`await batcher.call(script, keys, args)`: the script's reply, or its error as an exception."""

    def __init__(self, client: Any, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._queue: list[Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._outstanding = 0     # calls not finished yet (queued, in flight, waiting for a retry)

    def call(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outstanding += 1
        self._enqueue(Call(script, keys, args, future))
        return future

    def submit(self, script: Any, keys: list[str], args: list[Any], done: Done) -> None:
        """As `call`, for a caller that does not wait: `done(reply, None)` or `done(None, error)` is called once,
        from the reply (the settles: no future, no callback scheduled per call)."""
        self._outstanding += 1
        self._enqueue(Call(script, keys, args, None, done))

    def _enqueue(self, call: Call) -> None:
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        self._send_tick(queue)

    def _send_tick(self, calls: list[Call]) -> None:
        raise NotImplementedError

    def _finish(self, call: Call, result: Any = None, exc: BaseException | None = None) -> None:
        """The one place a call ends (its future may have been cancelled by the caller meanwhile)."""
        self._outstanding -= 1
        future = call.future
        if future is None:
            assert call.done is not None
            try:
                call.done(result, exc)
            except Exception:                 # a bug in a callback must not stall the replies behind it
                log.exception("script call callback failed")
            return
        if future.done():
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    def _fail_all(self, calls: list[Call], exc: BaseException) -> None:
        for call in calls:
            self._finish(call, exc=exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Waits until every queued call has its reply (bounded: every connection has a reply timeout)."""
        while self._outstanding > 0 or self._tasks:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0.001)

    def _close_connections(self) -> None:
        pass

    async def close(self) -> None:
        await self.drain()
        self._close_connections()


class ScriptBatcher(Coalescer):
    """The single Redis. A NOSCRIPT reply (a restarted or flushed server) loads the script and retries that
    call once. `pipelined=False` sends one redis-py EVALSHA per call instead (the benchmarks' baseline)."""

    def __init__(self, client: Any, url: str = "", pipelined: bool = True, timeout_s: float = 1.0) -> None:
        super().__init__(client, timeout_s)
        self.pipe = RespPipe(url, timeout_s) if pipelined else None
        self._loading: dict[str, asyncio.Future[Any]] = {}

    def _send_tick(self, calls: list[Call]) -> None:
        if self.pipe is None:
            for call in calls:
                self._spawn(self._one(call))
        elif self.pipe.connected:
            self._write(calls)
        else:
            self._spawn(self._connect_and_write(calls))

    async def _connect_and_write(self, calls: list[Call]) -> None:
        assert self.pipe is not None
        try:
            await self.pipe.connect()
        except Exception as exc:
            self._fail_all(calls, exc)
            return
        self._write(calls)

    def _write(self, calls: list[Call]) -> None:
        assert self.pipe is not None
        self.pipe.send([call.packed() for call in calls], [functools.partial(self._complete, call) for call in calls])

    def _complete(self, call: Call, reply: Any, exc: BaseException | None) -> None:
        if exc is None:
            self._finish(call, reply)
        elif isinstance(exc, NoScriptError) and not call.reloaded and call.waited_for:
            call.reloaded = True
            self._spawn(self._reload_and_retry(call))
        else:
            self._finish(call, exc=exc)

    async def _load(self, script: Any) -> None:
        """SCRIPT LOAD once, however many calls met NOSCRIPT at the same time."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = self._loading[script.sha] = asyncio.ensure_future(self.client.script_load(script.script))
            loading.add_done_callback(lambda _: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    async def _reload_and_retry(self, call: Call) -> None:
        try:
            await self._load(call.script)
        except Exception as exc:
            self._finish(call, exc=exc)
            return
        await self._connect_and_write([call])

    async def _one(self, call: Call) -> None:
        """One EVALSHA through redis-py (no coalescing)."""
        script, keys, args = call.script, call.keys, call.args
        try:
            try:
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self._load(script)
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except Exception as exc:
            self._finish(call, exc=exc)
            return
        self._finish(call, result)

    def _close_connections(self) -> None:
        if self.pipe is not None:
            self.pipe.close()

