"""The Redis Cluster hot path: a tick's script calls coalesced per primary, as `ScriptBatcher` does on one Redis.

Each call goes to the primary owning the hash slot of its first key (all of an account's keys share its
`{s:NN}` tag, so a script stays in one slot), over one pipelined connection (`RespPipe`) per primary: one
write per node and tick. Replies other than the script's own:

- MOVED: the slot has a new owner. It is recorded at once, the call resent there, and the whole slot map
  refreshed in the background (a MOVED rarely comes alone: a resharding or a failover moved more slots).
- ASK: the slot is migrating and the call's keys have left: resent to the target after ASKING (one write).
- TRYAGAIN: a multi-key script while a migration has split its keys between two nodes: resent through the
  slot map after a short pause, until `timeout_s` after the first TRYAGAIN.
- NOSCRIPT: SCRIPT LOAD is written ahead of the call on the same connection (once per node and script).
- A node down or silent: the calls fail with redis-py's ConnectionError/TimeoutError, so the engine's one
  Redis-unavailable policy applies (fail-open or fail-closed), and the slot map is refreshed (at most once a
  second) in case a failover moved its slots.

Redirections per call are bounded (`MAX_REDIRECTS`); past them the last error reply is the call's result.
Resends go through the tick queue, so redirected calls are coalesced like new ones.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import hiredis
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.quota.batcher import Call, Coalescer
from gateway.quota.resp_pipe import Handler, RespPipe
from gateway.quota.slot_map import SlotMap

log = logging.getLogger("aihub.quota")

MAX_REDIRECTS = 5              # MOVED and ASK replies followed per call
TRYAGAIN_PAUSE_S = 0.01        # first pause after TRYAGAIN, doubled each time up to TRYAGAIN_MAX_PAUSE_S
TRYAGAIN_MAX_PAUSE_S = 0.1
FAILURE_REFRESH_INTERVAL_S = 1.0
ASKING = hiredis.pack_command(("ASKING",))


def _ignore(reply: Any, exc: BaseException | None) -> None:
    """ASKING's OK (an error there shows in the call's own reply)."""


class ClusterBatcher(Coalescer):
    def __init__(self, client: Any, url: str, timeout_s: float = 1.0) -> None:
        super().__init__(client, timeout_s)
        self.url = url                            # credentials for every node's connection
        self.slots = SlotMap(client)
        self.pipes: dict[str, RespPipe] = {}      # node name -> its pipelined connection
        self._loading: set[tuple[str, str]] = set()   # (node, sha) whose SCRIPT LOAD is written, not answered
        self._failure_refresh_at = 0.0

    # -- routing -------------------------------------------------------------------------------------
    def _send_tick(self, calls: list[Call]) -> None:
        if self.slots.loaded:
            self._route(calls)
        else:
            self._spawn(self._load_and_route(calls))

    async def _load_and_route(self, calls: list[Call]) -> None:
        try:
            await self.slots.refresh()
        except RedisError as exc:
            self._fail_all(calls, exc)
            return
        self._route(calls)

    def _route(self, calls: list[Call]) -> None:
        owners, slot_of = self.slots.owners, self.slots.slot
        by_node: dict[str, list[Call]] = {}
        for call in calls:
            addr = call.addr
            if not addr:
                slot = slot_of(call.keys[0]) if call.keys else 0
                addr = owners[slot] or ""
                if not addr:
                    self._finish(call, exc=RedisConnectionError(f"hash slot {slot} is not served by any node"))
                    continue
                call.addr = addr
            group = by_node.get(addr)
            if group is None:
                by_node[addr] = [call]
            else:
                group.append(call)
        for addr, group in by_node.items():
            pipe = self._pipe(addr)
            if pipe.connected:
                self._write(addr, pipe, group)
            else:
                self._spawn(self._connect_and_write(addr, pipe, group))

    def _pipe(self, addr: str) -> RespPipe:
        pipe = self.pipes.get(addr)
        if pipe is None:
            host, port = self.slots.addresses.get(addr) or (addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1]))
            pipe = self.pipes[addr] = RespPipe(self.url, self.timeout_s, host, port)
        return pipe

    async def _connect_and_write(self, addr: str, pipe: RespPipe, calls: list[Call]) -> None:
        try:
            await pipe.connect()
        except Exception as exc:
            self._node_failed()
            self._fail_all(calls, exc)
            return
        self._write(addr, pipe, calls)

    def _write(self, addr: str, pipe: RespPipe, calls: list[Call]) -> None:
        """One write: per call [SCRIPT LOAD] [ASKING] EVALSHA; each reply goes to its handler."""
        packed: list[bytes] = []
        handlers: list[Handler] = []
        for call in calls:
            if call.reload:
                call.reload = False
                loading = (addr, call.script.sha)
                if loading not in self._loading:
                    self._loading.add(loading)
                    load: tuple[Any, ...] = ("SCRIPT", "LOAD", call.script.script)
                    packed.append(hiredis.pack_command(load))
                    handlers.append(functools.partial(self._loaded, loading))
            if call.asking:
                packed.append(ASKING)
                handlers.append(_ignore)
            packed.append(call.packed())
            handlers.append(functools.partial(self._complete, call))
        pipe.send(packed, handlers)

    def _loaded(self, loading: tuple[str, str], reply: Any, exc: BaseException | None) -> None:
        self._loading.discard(loading)          # a failed load shows as the call's second NOSCRIPT

    # -- replies -------------------------------------------------------------------------------------
    def _complete(self, call: Call, reply: Any, exc: BaseException | None) -> None:
        if exc is None:
            self._finish(call, reply)
        elif not call.waited_for:                 # the caller stopped waiting: no resend
            self._finish(call, exc=exc)
        elif isinstance(exc, NoScriptError) and not call.reloaded:
            call.reloaded = call.reload = True
            self._enqueue(call)                  # same node, same ASKING
        elif isinstance(exc, AskError) and call.redirects < MAX_REDIRECTS:   # MovedError is an AskError
            call.redirects += 1
            if isinstance(exc, MovedError):
                call.addr, call.asking = self.slots.moved(exc.slot_id, exc.host, exc.port), False
                if not self.slots.refreshing:
                    self._spawn(self._refresh())
            else:
                call.addr, call.asking = self.slots.node(exc.host, exc.port), True
            self._enqueue(call)
        elif isinstance(exc, TryAgainError) and self._may_retry(call):
            pause = min(TRYAGAIN_MAX_PAUSE_S, TRYAGAIN_PAUSE_S * 2 ** min(call.retries, 8))
            call.retries += 1
            call.redirects = 0
            call.addr, call.asking = "", False   # through the slot map again
            asyncio.get_running_loop().call_later(pause, self._enqueue, call)
        else:
            if isinstance(exc, RedisConnectionError | RedisTimeout):
                self._node_failed()
            self._finish(call, exc=exc)

    def _may_retry(self, call: Call) -> bool:
        now = time.monotonic()
        if not call.deadline:
            call.deadline = now + self.timeout_s
        return now < call.deadline

    # -- slot map ------------------------------------------------------------------------------------
    def _node_failed(self) -> None:
        now = time.monotonic()
        if now - self._failure_refresh_at >= FAILURE_REFRESH_INTERVAL_S:
            self._failure_refresh_at = now       # one refresh per interval, even when it fails
            self._spawn(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.slots.refresh()
        except RedisError as exc:
            log.warning("Redis Cluster slot map not refreshed: %s", exc)
            return
        serving = set(self.slots.owners)
        for addr in [a for a, pipe in self.pipes.items() if a not in serving and pipe.idle]:
            self.pipes.pop(addr).close()          # a node that serves no slot any more

    def _close_connections(self) -> None:
        for pipe in self.pipes.values():
            pipe.close()
        self.pipes.clear()
