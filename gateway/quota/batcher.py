"""Coalesces script calls made in the same event-loop tick into one pipeline round trip."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

Call = tuple[Any, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """`await batcher.call(script, keys, args)`; calls queued in one tick share one pipeline.

    Results that are errors are set as exceptions on their own futures only. A NOSCRIPT reply (a restarted
    or flushed server) loads the script and retries those calls once.
    """

    def __init__(self, client: Any, max_batch: int = 256, pipelined: bool = True) -> None:
        self.client = client
        self.pipelined = pipelined   # redis-py refuses EVALSHA in cluster pipelines: concurrent calls there
        self.max_batch = max_batch
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

    async def _one(self, call: Call) -> Any:
        script, keys, args, _ = call
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError as exc:
            return exc

    async def _send(self, batch: list[Call]) -> list[Any]:
        if len(batch) == 1:
            return [await self._one(batch[0])]
        if not self.pipelined:
            return list(await asyncio.gather(*(self._one(call) for call in batch), return_exceptions=True))
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

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
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
