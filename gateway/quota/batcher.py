"""Coalesces script calls made in the same event-loop tick into one round trip.

On a single Redis the batch is packed with hiredis and written on one pooled redis-py connection, then the
replies are read in order: the same wire traffic as a redis-py pipeline at a fraction of its Python cost
(the pipeline machinery was the gateway's largest quota cost). One `asyncio.timeout` bounds the batch.
redis-py refuses EVALSHA in cluster pipelines, so on a cluster the calls go out concurrently instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

Call = tuple[Any, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """`await batcher.call(script, keys, args)`; calls queued in one tick share one round trip.

    A reply that is an error is set as the exception of its own future only. A NOSCRIPT reply (a restarted
    or flushed server) loads the script and retries those calls once.
    """

    def __init__(self, client: Any, url: str = "", max_batch: int = 256, pipelined: bool = True,
                 timeout_s: float = 1.0) -> None:
        self.client = client
        self.url = url
        self.max_batch = max_batch
        self.pipelined = pipelined
        self.timeout_s = timeout_s
        self._pool: BlockingConnectionPool | None = None
        self._queue: list[Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self.max_batch):
            task = asyncio.get_running_loop().create_task(self._run(queue[start:start + self.max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def pool(self) -> BlockingConnectionPool:
        """A pool like the client's but without per-operation socket timeouts (the batch has one)."""
        if self._pool is None:
            self._pool = BlockingConnectionPool.from_url(self.url, max_connections=64, timeout=self.timeout_s,
                                                         socket_timeout=None,
                                                         socket_connect_timeout=self.timeout_s)
        return self._pool

    async def _one(self, call: Call) -> Any:
        script, keys, args, _ = call
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError as exc:
            return exc

    async def _round_trip(self, batch: list[Call]) -> list[Any]:
        packed = b"".join(hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                          for script, keys, args, _ in batch)
        connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self.timeout_s):
                await connection.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in batch:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
        except BaseException as exc:
            await connection.disconnect(nowait=True)    # replies may still be in flight: never reuse it
            if isinstance(exc, TimeoutError):
                raise RedisTimeout(f"no reply from Redis within {self.timeout_s}s") from None
            raise
        finally:
            await self.pool.release(connection)
        return replies

    async def _send(self, batch: list[Call]) -> list[Any]:
        if not self.pipelined:
            if len(batch) == 1:
                return [await self._one(batch[0])]
            return list(await asyncio.gather(*(self._one(call) for call in batch), return_exceptions=True))
        return await self._round_trip(batch)

    async def _run(self, batch: list[Call]) -> None:
        try:
            results = await self._send(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                    await self.client.script_load(script.script)
                retried = await self._send([batch[i] for i in missing])
                for i, result in zip(missing, retried, strict=True):
                    results[i] = result
        except BaseException as exc:  # connection errors fail every call of the batch
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def drain(self) -> None:
        """Waits until every queued call has its reply."""
        while self._tasks or self._queue:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)   # the flush is scheduled for the next tick

    async def close(self) -> None:
        await self.drain()
        if self._pool is not None:
            await self._pool.disconnect()
