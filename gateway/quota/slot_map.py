"""A Redis Cluster's hash slot -> primary map for the hot path, read through redis-py's cluster client.

The map is redis-py's own (`NodesManager.initialize`: CLUSTER SLOTS from a reachable node, address remapping,
coverage checks), flattened to a list of node names so a lookup is one index; slots are `redis.crc.key_slot`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

_MAX_CACHED_KEYS = 100_000


class SlotMap:
    """`owners[slot]`: the name (`host:port`) of the primary serving the slot, None if no node does."""

    def __init__(self, client: Any) -> None:
        self.client = client                     # a redis.asyncio.cluster.RedisCluster
        self.owners: list[str | None] = []       # empty until the first `refresh`
        self.addresses: dict[str, tuple[str, int]] = {}
        self._reading: asyncio.Future[None] | None = None
        self._slots: dict[str, int] = {}         # key name -> slot (the hot path asks for the same keys)

    @property
    def loaded(self) -> bool:
        return bool(self.owners)

    @property
    def refreshing(self) -> bool:
        return self._reading is not None

    def slot(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= _MAX_CACHED_KEYS:
                self._slots.clear()
            slot = self._slots[key] = key_slot(key.encode())
        return slot

    def node(self, host: str, port: int) -> str:
        """The name of the node a redirection names (remapped as redis-py remaps CLUSTER SLOTS addresses)."""
        host, port = self.client.nodes_manager.remap_host_port(host, port)
        name = f"{host}:{port}"
        self.addresses.setdefault(name, (host, port))
        return name

    def moved(self, slot: int, host: str, port: int) -> str:
        """A MOVED reply: the slot's new owner, recorded at once (the whole map is refreshed separately)."""
        name = self.node(host, port)
        if self.owners:
            self.owners[slot] = name
        return name

    async def refresh(self) -> None:
        """Reads the map again; concurrent callers share one read. A cluster no node of which answers is a
        redis-py ConnectionError (the engine's Redis-unavailable policy)."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(self._read_done)
        await asyncio.shield(self._reading)

    def _read_done(self, reading: asyncio.Future[None]) -> None:
        self._reading = None
        if not reading.cancelled():
            reading.exception()                  # retrieved here: a caller may have stopped waiting

    async def _read(self) -> None:
        manager = self.client.nodes_manager
        try:
            if self.owners:
                await manager.initialize()
            else:                                # the client's own first read: its `aclose` then closes
                await self.client.initialize()   # the node connections that read opened
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RedisConnectionError(f"cannot read the Redis Cluster slot map: {exc}") from None
        owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        for slot, nodes in manager.slots_cache.items():
            primary = nodes[0]
            owners[slot] = primary.name
            self.addresses[primary.name] = (primary.host, int(primary.port))
        self.owners = owners
