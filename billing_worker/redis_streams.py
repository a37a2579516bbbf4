"""Consumer-group operations on the usage streams, with raw replies (bytes, no redis-py callbacks).

Replies are read undecoded whatever the client's `decode_responses`, so entries reach
`usage_entry.to_row` as the flat `[field, value, ...]` byte lists Redis sends, with no per-entry
objects in between. Works with RESP2 and RESP3 clients of a single Redis, where one XREADGROUP names
every shard stream, and with a `redis.RedisCluster` client, where every command names one shard stream
(one hash slot): the reads go per stream to the primary owning its slot, and the settle MULTI keeps to
one slot (`{s:NN}:usage` and `{s:NN}:usage:dead`). Redis errors are wrapped into `StreamError`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.crc import key_slot

from billing_worker.errors import StreamError
from gateway.keys import dead_letter_for
from gateway.redis_client import text

# One stream's share of a read: (stream key, [[entry id, flat fields or None], ...]) as Redis sent it.
Chunk = tuple[str, list[list[Any]]]
# An entry to dead-letter: (entry id, its flat fields, reason).
DeadLetter = tuple[bytes, Sequence[bytes] | None, str]
# A client of a single Redis, or of a Redis Cluster.
Client = redis.Redis | redis.RedisCluster

# Attempts of a command on a cluster when its slot moved (the slot map is refreshed between them).
CLUSTER_ATTEMPTS = 3


def _send(client: redis.Redis, args: tuple[str | bytes | int, ...]) -> Any:
    pool = client.connection_pool
    conn: Any = client.connection or pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response(disable_decoding=True)
    finally:
        if client.connection is None:
            pool.release(conn)


def _stream_error(exc: Exception, args: tuple[str | bytes | int, ...]) -> StreamError:
    if isinstance(exc, redis.ResponseError):
        return StreamError(f"{args[0]!s} failed: {exc}")
    return StreamError(f"Redis unavailable during {args[0]!s}: {exc}")


def call(client: redis.Redis, *args: str | bytes | int) -> Any:
    """Send one command on a pooled connection and return the raw, undecoded reply."""
    try:
        return _send(client, args)
    except redis.RedisError as exc:
        raise _stream_error(exc, args) from None


# Cluster replies after which the slot map is refreshed and the command sent again.
_REROUTE = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
            redis.ConnectionError, redis.TimeoutError)


def call_on(client: Client, key: str, *args: str | bytes | int) -> Any:
    """`call` on a single Redis; on a cluster, `call` on the primary owning `key`'s slot (every key
    the command names must be in that slot). MOVED/ASK, a failover or a node down refresh the slot map
    and send the command again, up to `CLUSTER_ATTEMPTS` times."""
    if not isinstance(client, redis.RedisCluster):
        return call(client, *args)
    for attempt in range(CLUSTER_ATTEMPTS):
        try:
            node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))  # its primary
            return _send(client.get_redis_connection(node), args)
        except _REROUTE as exc:
            if attempt + 1 >= CLUSTER_ATTEMPTS:
                raise _stream_error(exc, args) from None
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:  # e.g. a slot not covered
            raise _stream_error(exc, args) from None
        try:
            client.nodes_manager.initialize()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise _stream_error(exc, args) from None
    raise AssertionError("unreachable")


def _chunks(reply: Any) -> list[Chunk]:
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    return [(text(key), entries) for key, entries in items if entries]


def _pairs(reply: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat [k, v, ...] list as a dict with str keys."""
    if isinstance(reply, dict):
        return {text(k): v for k, v in reply.items()}
    it = iter(reply)
    return {text(k): v for k, v in zip(it, it, strict=False)}


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def format_id(parsed: tuple[int, int]) -> str:
    return f"{parsed[0]}-{parsed[1]}"


def ensure_groups(client: Client, streams: Sequence[str], group: str) -> None:
    """Create the consumer group on every stream (from the first entry), tolerating existing ones."""
    for stream in streams:
        try:
            call_on(client, stream, "XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
        except StreamError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _read_group(client: Client, streams: Sequence[str], group: str, consumer: str, count: int,
                start: str) -> list[Chunk]:
    """XREADGROUP from `start` on every stream: one command on a single Redis, one per stream (one
    hash slot each) on a cluster."""
    if not isinstance(client, redis.RedisCluster):
        return _chunks(call(client, "XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                            "STREAMS", *streams, *([start] * len(streams))))
    chunks: list[Chunk] = []
    for stream in streams:
        chunks.extend(_chunks(call_on(client, stream, "XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                                      "STREAMS", stream, start)))
    return chunks


def _per_stream(limit: int, got: int, active: Sequence[str]) -> int:
    return max(1, -(-(limit - got) // len(active)))


def _top_up(client: Client, group: str, consumer: str, limit: int, chunks: list[Chunk], active: list[str],
            per_stream: int) -> list[Chunk]:
    """Further XREADGROUP rounds over the streams whose last round was full, until about `limit` entries."""
    got = sum(len(entries) for _, entries in chunks)
    while active and got < limit:
        per_stream = _per_stream(limit, got, active)
        round_chunks = _read_group(client, active, group, consumer, per_stream, ">")
        chunks.extend(round_chunks)
        got += sum(len(entries) for _, entries in round_chunks)
        active = [stream for stream, entries in round_chunks if len(entries) >= per_stream]
    return chunks


def read_new(client: Client, streams: Sequence[str], group: str, consumer: str, limit: int) -> list[Chunk]:
    """Up to about `limit` never-delivered entries across the streams (they become pending to us)."""
    return _top_up(client, group, consumer, limit, [], list(streams), 0)


class NewEntries:
    """`read_new` batch after batch, with the first XREADGROUP of the next batch sent ahead (`prefetch`) on a
    single Redis, so that Redis builds that reply while the caller converts the current batch. Entries read
    ahead are delivered (pending to this consumer) when Redis runs the command, as if read later; `close` reads
    a reply still outstanding. On a cluster, or with a client of one connection (shared with the
    acknowledgements), `prefetch` does nothing."""

    def __init__(self, client: Client, streams: Sequence[str], group: str, consumer: str, limit: int) -> None:
        self.client, self.streams, self.group, self.consumer, self.limit = client, list(streams), group, consumer, limit
        self.enabled = not isinstance(client, redis.RedisCluster) and client.connection is None
        self._sent: Any = None        # the connection whose reply is outstanding

    def prefetch(self) -> None:
        if not self.enabled or self._sent is not None:
            return
        assert isinstance(self.client, redis.Redis)
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()
        per_stream = _per_stream(self.limit, 0, self.streams)
        args: tuple[str | int, ...] = ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", per_stream,
                "STREAMS", *self.streams, *([">"] * len(self.streams)))
        try:
            conn.send_command(*args)
        except redis.RedisError as exc:
            conn.disconnect()
            pool.release(conn)
            raise _stream_error(exc, args) from None
        self._sent = conn

    def _receive(self) -> list[Chunk]:
        assert isinstance(self.client, redis.Redis)
        conn, self._sent = self._sent, None
        try:
            return _chunks(conn.read_response(disable_decoding=True))
        except redis.RedisError as exc:
            conn.disconnect()
            raise _stream_error(exc, ("XREADGROUP",)) from None
        finally:
            self.client.connection_pool.release(conn)

    def read(self) -> list[Chunk]:
        """The next batch: the reply read ahead, if any, topped up as `read_new` does."""
        if self._sent is None:
            return read_new(self.client, self.streams, self.group, self.consumer, self.limit)
        per_stream = _per_stream(self.limit, 0, self.streams)
        chunks = self._receive()
        full = [stream for stream, entries in chunks if len(entries) >= per_stream]
        return _top_up(self.client, self.group, self.consumer, self.limit, chunks, full, per_stream)

    def close(self) -> None:
        if self._sent is not None:
            with contextlib.suppress(StreamError):
                self._receive()


def read_own_pending(client: Client, streams: Sequence[str], group: str, consumer: str,
                     limit: int) -> list[Chunk]:
    """Entries delivered to this consumer but never acknowledged (a failed insert, a crash)."""
    per_stream = max(1, limit // len(streams))
    return _read_group(client, streams, group, consumer, per_stream, "0")


def claim_stale(client: Client, stream: str, group: str, consumer: str, min_idle_ms: int,
                cursor: str, limit: int) -> tuple[str, list[list[Any]], int]:
    """XAUTOCLAIM: take over entries pending to any consumer for at least `min_idle_ms`.

    Returns the next cursor ("0-0" when the scan is complete), the claimed entries, and how many
    pending ids had no entry left (Redis drops those from the pending list itself).
    """
    reply = call_on(client, stream, "XAUTOCLAIM", stream, group, consumer, min_idle_ms, cursor, "COUNT", limit)
    deleted = len(reply[2]) if len(reply) > 2 and reply[2] else 0
    return text(reply[0]), [e for e in reply[1] if e is not None], deleted


def _queue_settle(pipe: Any, stream: str, dead_stream: str, group: str, ids: Sequence[bytes],
                  dead: Iterable[DeadLetter], now_ms: bytes) -> None:
    for entry_id, flat, reason in dead:
        fields = list(flat or [])
        if len(fields) % 2:
            fields[-1:] = [b"_unpaired", fields[-1]]
        pipe.execute_command("XADD", dead_stream, "*", *fields, b"reason", reason.encode(),
                             b"src_stream", stream.encode(), b"src_id", entry_id, b"dead_ms", now_ms)
    if ids:
        pipe.execute_command("XACK", stream, group, *ids)


def settle(client: Client, stream: str, dead_stream: str, group: str, ids: Sequence[bytes],
           dead: Iterable[DeadLetter]) -> None:
    """Dead-letter the given entries and acknowledge `ids`, atomically (MULTI/EXEC, one hash slot: on a
    cluster, the cluster client's transaction pipeline sends it to the primary owning that slot)."""
    now_ms = str(int(time.time() * 1000)).encode()
    try:
        pipe: Any
        with client.pipeline(transaction=True) as pipe:
            _queue_settle(pipe, stream, dead_stream, group, ids, dead, now_ms)
            pipe.execute()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise StreamError(f"Redis unavailable while acknowledging {stream}: {exc}") from None


Settle = tuple[str, Sequence[bytes], Sequence[DeadLetter]]   # (stream, ids to acknowledge, dead letters)


def settle_all(client: Client, group: str, settles: Sequence[Settle]) -> None:
    """`settle` of several streams, `(stream, ids, dead letters)` each: on a single Redis in one MULTI/EXEC (one
    round trip; still atomic per stream), on a cluster one per stream (one slot each)."""
    if isinstance(client, redis.RedisCluster):
        for stream, ids, dead in settles:
            settle(client, stream, dead_letter_for(stream), group, ids, dead)
        return
    now_ms = str(int(time.time() * 1000)).encode()
    try:
        pipe: Any
        with client.pipeline(transaction=True) as pipe:
            for stream, ids, dead in settles:
                _queue_settle(pipe, stream, dead_letter_for(stream), group, ids, dead, now_ms)
            pipe.execute()
    except redis.RedisError as exc:
        raise StreamError(f"Redis unavailable while acknowledging {len(settles)} streams: {exc}") from None


def safe_trim_id(client: Client, stream: str) -> str | None:
    """The lowest id any consumer group may still need: the oldest pending id, or the id after the
    last delivered one when nothing is pending. None when the stream has no group (never trim)."""
    bounds: list[tuple[int, int]] = []
    for raw in call_on(client, stream, "XINFO", "GROUPS", stream) or []:
        info = _pairs(raw)
        if int(info.get("pending") or 0) > 0:
            summary = call_on(client, stream, "XPENDING", stream, info["name"])
            if summary and summary[1] is not None:
                bounds.append(parse_id(summary[1]))
                continue
        ms, seq = parse_id(info.get("last-delivered-id") or b"0-0")
        bounds.append((ms, seq + 1))
    return format_id(min(bounds)) if bounds else None


def trim_acknowledged(client: Client, stream: str) -> int:
    """XTRIM MINID below what every group has acknowledged; never removes a pending entry."""
    minid = safe_trim_id(client, stream)
    if minid is None:
        return 0
    return int(call_on(client, stream, "XTRIM", stream, "MINID", minid))


def backlog(client: Client, streams: Sequence[str], group: str) -> int:
    """Entries not yet acknowledged by `group`: pending plus never delivered (lag), over all streams."""
    total = 0
    for stream in streams:
        try:
            groups = call_on(client, stream, "XINFO", "GROUPS", stream)
        except StreamError:
            continue  # no such stream yet
        mine = [info for info in map(_pairs, groups or []) if text(info["name"]) == group]
        if not mine:  # the group will be created from the first entry
            total += int(call_on(client, stream, "XLEN", stream))
            continue
        lag = mine[0].get("lag")
        total += int(mine[0].get("pending") or 0)
        total += int(lag) if lag is not None else int(call_on(client, stream, "XLEN", stream))
    return total
