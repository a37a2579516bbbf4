"""The one spelling of a request path the gateway routes on, checks and forwards.

A path is routed only in its plain form: `/`-separated segments of unreserved characters (RFC 3986 letters,
digits, `-._~`, plus `:` and `@`), no empty segment (`//`, a trailing `/`), no `.` or `..` segment and no
percent-encoding. Anything else could route here as one endpoint and reach the upstream as another (its
client normalizes dot segments and decodes escapes), so it is refused with 404 `unknown_url`, not rewritten.
The path that passed this check is byte for byte the path sent upstream.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from gateway.errors import NotFound

SEGMENT = re.compile(r"[A-Za-z0-9\-_~:@.]+")
MAX_PATH = 512


def plain_path(scope: MutableMapping[str, Any]) -> str:
    """The request's path as the client wrote it (`raw_path`), if it is plain; NotFound otherwise."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    if len(path) > MAX_PATH or not path.startswith("/"):
        raise _refused(path)
    for segment in path[1:].split("/"):
        if segment in ("", ".", "..") or SEGMENT.fullmatch(segment) is None:
            raise _refused(path)
    return path


def _refused(path: str) -> NotFound:
    shown = path if len(path) <= 80 else path[:80] + "..."
    return NotFound(f"Unknown path {shown!r}. Paths are routed only as written plainly: no '.' or '..' segments, "
                    "no percent-encoding, no empty segments or trailing '/'.", code="unknown_url")
