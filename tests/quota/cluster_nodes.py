"""Direct access to each node of a test Redis Cluster: who serves a slot, per-node counters, moving a slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis

from gateway.redis_server import RedisCluster

REDIRECTIONS = frozenset({"MOVED", "ASK", "TRYAGAIN", "NOSCRIPT", "CLUSTERDOWN", "CROSSSLOT"})


class Nodes:
    """One plain client per node, by node name (`host:port`, as the slot map names them)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.clients = {f"127.0.0.1:{node.port}": redis.Redis(port=node.port) for node in cluster.nodes}
        self.ids = {name: client.execute_command("CLUSTER", "MYID").decode()
                    for name, client in self.clients.items()}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def owner(self, slot: int) -> str:
        """The node serving `slot`, as the first node sees it."""
        for start, end, primary, *_ in next(iter(self.clients.values())).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return f"{primary[0].decode()}:{primary[1]}"
        raise AssertionError(f"slot {slot} is not served")

    def reset_stats(self) -> None:
        for client in self.clients.values():
            client.config_resetstat()

    def calls(self, name: str, command: str) -> int:
        """Calls of `command` (`evalsha`, `script|load`, `asking`) the node counted since the last reset."""
        return int(self.clients[name].info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    def errors(self, name: str) -> dict[str, int]:
        """Redirections and script errors the node sent since the last reset, by prefix (other errors, such as
        the ERR a Redis 7.0 answers to the CLIENT SETINFO of a new redis-py connection, are left out)."""
        stats = self.clients[name].info("errorstats")
        found = {key.removeprefix("errorstat_"): int(value["count"]) for key, value in stats.items()}
        return {key: count for key, count in found.items() if key in REDIRECTIONS}

    def script_connections(self, name: str) -> int:
        """Connections to the node whose last command was EVALSHA."""
        return sum(1 for client in self.clients[name].client_list() if client["cmd"] == "evalsha")

    def begin_migration(self, slot: int, source: str, target: str) -> None:
        """CLUSTER SETSLOT IMPORTING/MIGRATING, then MIGRATE every key of the slot to the target."""
        src, dst = self.clients[source], self.clients[target]
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[target])
        host, port = target.rsplit(":", 1)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            src.execute_command("MIGRATE", host, int(port), "", 0, 5000, "KEYS", *keys)

    def end_migration(self, slot: int, target: str) -> None:
        """CLUSTER SETSLOT NODE on every node: the target serves the slot."""
        for client in self.clients.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[target])

    def move_slot(self, slot: int, source: str, target: str) -> None:
        self.begin_migration(slot, source, target)
        self.end_migration(slot, target)

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        """Until every node reports cluster_state:ok."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in self.clients.values()):
                    return
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError("the cluster did not return to cluster_state:ok")


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Yields to the event loop until `condition()` holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
