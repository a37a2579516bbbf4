"""Coalesces script calls made in the same event-loop tick into one round trip.

On a single Redis a tick's calls are packed with hiredis and written at once on one pipelined connection
(`RespPipe`): no task, pool checkout or lock per call; replies resolve the futures in order. redis-py's
pipelines were the gateway's largest quota cost, and redis-py refuses EVALSHA in cluster pipelines, so on a
cluster the calls go out concurrently through the redis-py cluster client instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.exceptions import NoScriptError

from gateway.quota.resp_pipe import RespPipe

Call = tuple[Any, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """`await batcher.call(script, keys, args)`: the script's reply, or its error as an exception.

    A NOSCRIPT reply (a restarted or flushed server) loads the script and retries that call once.
    """

    def __init__(self, client: Any, url: str = "", pipelined: bool = True, timeout_s: float = 1.0) -> None:
        self.client = client
        self.pipelined = pipelined
        self.pipe = RespPipe(url, timeout_s) if pipelined else None
        self._queue: list[Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[str, asyncio.Future[Any]] = {}

    def call(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        if self.pipe is None:
            for call in queue:
                self._spawn(self._one(call))
        elif self.pipe.connected:
            self._write(queue, retried=False)
        else:
            self._spawn(self._connect_and_write(queue, retried=False))

    # -- single Redis: the pipelined connection ------------------------------------------------------
    async def _connect_and_write(self, calls: list[Call], retried: bool) -> None:
        assert self.pipe is not None
        try:
            await self.pipe.connect()
        except Exception as exc:
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        self._write(calls, retried)

    def _write(self, calls: list[Call], retried: bool) -> None:
        assert self.pipe is not None
        packed = [hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                  for script, keys, args, _ in calls]
        for call, reply in zip(calls, self.pipe.send(packed), strict=True):
            reply.add_done_callback(lambda done, call=call: self._complete(call, done, retried))  # type: ignore[misc]

    def _complete(self, call: Call, reply: asyncio.Future[Any], retried: bool) -> None:
        future = call[3]
        if future.done():
            return
        exc = reply.exception()
        if exc is None:
            future.set_result(reply.result())
        elif isinstance(exc, NoScriptError) and not retried:
            self._spawn(self._reload_and_retry(call))
        else:
            future.set_exception(exc)

    async def _load(self, script: Any) -> None:
        """SCRIPT LOAD once, however many calls met NOSCRIPT at the same time."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = self._loading[script.sha] = asyncio.ensure_future(self.client.script_load(script.script))
            loading.add_done_callback(lambda _: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    async def _reload_and_retry(self, call: Call) -> None:
        try:
            await self._load(call[0])
        except Exception as exc:
            if not call[3].done():
                call[3].set_exception(exc)
            return
        await self._connect_and_write([call], retried=True)

    # -- cluster: one EVALSHA per call through redis-py ----------------------------------------------
    async def _one(self, call: Call) -> None:
        script, keys, args, future = call
        try:
            try:
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self._load(script)
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def drain(self) -> None:
        """Waits until every queued call has its reply."""
        while self._queue or self._tasks or (self.pipe and self.pipe.connection and self.pipe.connection.pending):
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        await self.drain()
        if self.pipe is not None:
            self.pipe.close()
