"""Splits a byte stream into server-sent events as they complete, without waiting for the end."""

from __future__ import annotations

from typing import Any

import orjson


class SSESplitter:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete events (each with its trailing blank line) found so far."""
        self._buffer += chunk
        if b"\n\n" not in self._buffer and b"\r\n\r\n" not in self._buffer:
            return []
        data = self._buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = data.split(b"\n\n")
        return [event + b"\n\n" for event in events]

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON object of a `data: {...}` event, or None for [DONE], comments and other events."""
    payload = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not payload.startswith(b"{"):
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
