"""Validate one usage stream entry (docs/redis-keys.md) and turn it into a TabSeparated row.

The drain reads entries raw (bytes, flat `[field, value, ...]` lists). The fast path maps the entry's
field order to the table's column order once per layout, joins the values and checks the whole line
with one regular expression; ClickHouse parses the numbers. Anything the fast path does not accept
goes through the slow path, which either names the reason (the entry is dead-lettered) or accepts it
with TabSeparated escaping (non-ASCII text, backslashes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import itemgetter

from billing_worker.errors import InvalidUsageEntry

# Stream field -> ClickHouse column, in the column order of the INSERT.
FIELD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rid", "rid"), ("acct", "acct"), ("key", "key_id"), ("plan", "plan"), ("model", "model"),
    ("upstream", "upstream"), ("period", "period"), ("outcome", "outcome"),
    ("ts_start_ms", "ts_start_ms"), ("ts_end_ms", "ts_end_ms"), ("status", "status"), ("calls", "calls"),
    ("overage", "overage"), ("pt", "pt"), ("ct", "ct"), ("cached", "cached"), ("reasoning", "reasoning"),
    ("cost_nanos", "cost_nanos"), ("latency_ms", "latency_ms"),
)
FIELDS: tuple[str, ...] = tuple(f for f, _ in FIELD_COLUMNS)
COLUMNS: tuple[str, ...] = (*(c for _, c in FIELD_COLUMNS), "stream_id")
OUTCOMES = ("ok", "upstream_error", "client_cancel", "abandoned")
MAX_TEXT = 256

_RID = r"[A-Za-z0-9_-]{8,64}"
_PERIOD = r"20[0-9]{2}-(?:0[1-9]|1[0-2])"
_TEXT = r"[\x20-\x5b\x5d-\x7e]"  # printable ASCII without the backslash: nothing to escape
_INT = r"[0-9]{1,18}"
_UINT8 = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"   # calls and overage calls of one request
_FAST = re.compile(
    (rf"{_RID}\t{_TEXT}{{1,256}}\t{_TEXT}{{1,256}}\t{_TEXT}{{1,256}}\t{_TEXT}{{1,256}}\t{_TEXT}{{0,256}}\t"
     rf"{_PERIOD}\t(?:{'|'.join(OUTCOMES)})\t[0-9]{{1,15}}\t[0-9]{{1,15}}\t[0-9]{{1,3}}\t{_UINT8}\t{_UINT8}\t"
     rf"{_INT}\t{_INT}\t{_INT}\t{_INT}\t{_INT}\t{_INT}\t[0-9]{{1,20}}-[0-9]{{1,20}}").encode())
_fast_match = _FAST.fullmatch

_Getter = Callable[[Sequence[bytes]], tuple[bytes, ...]]
_layouts: dict[tuple[bytes, ...], _Getter | None] = {}
_MAX_LAYOUTS = 256
_last: tuple[list[bytes], _Getter] = ([], itemgetter(0))  # the layout seen last: nearly all entries share it


def _layout(names: tuple[bytes, ...]) -> _Getter | None:
    """The getter picking our fields in column order from a flat entry with these field names."""
    if names in _layouts:
        return _layouts[names]
    positions = {name: 2 * i + 1 for i, name in enumerate(names)}
    wanted = [positions.get(f.encode()) for f in FIELDS]
    found: _Getter | None = None
    if None not in wanted and len(positions) == len(names):
        found = itemgetter(*wanted)
    if len(_layouts) < _MAX_LAYOUTS:
        _layouts[names] = found
    return found


def to_row(stream_id: bytes, flat: Sequence[bytes]) -> bytes:
    """The TabSeparated row (without newline) for one entry, or `InvalidUsageEntry` with the reason."""
    global _last
    getter: _Getter | None = None
    if not len(flat) & 1:
        names = flat[0::2]
        if names == _last[0]:
            getter = _last[1]
        else:
            getter = _layout(tuple(names))
            if getter is not None:
                _last = (list(names), getter)
    if getter is not None:
        line = b"\t".join(getter(flat)) + b"\t" + stream_id
        if _fast_match(line) is not None:
            return line
    return _slow_row(stream_id, flat)


def fields_of(flat: Sequence[bytes]) -> dict[str, str]:
    """Decode a flat entry for messages and dead letters (undecodable bytes are replaced)."""
    it = iter(flat)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in zip(it, it, strict=False)}


def _bad(field: str, expected: str, value: bytes | str | None) -> InvalidUsageEntry:
    shown = value if isinstance(value, str) or value is None else value.decode(errors="replace")
    return InvalidUsageEntry(f"{field}: expected {expected}, got {shown[:80]!r}" if shown is not None
                             else f"{field}: missing")


def _text(field: str, raw: bytes, *, allow_empty: bool = False) -> bytes:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise _bad(field, "UTF-8 text", raw) from None
    if not text and not allow_empty:
        raise _bad(field, "a non-empty value", text)
    if len(text) > MAX_TEXT or not text.isprintable():
        raise _bad(field, f"printable text of at most {MAX_TEXT} characters", text)
    return raw.replace(b"\\", b"\\\\")


def _number(field: str, raw: bytes, digits: int, allowed: tuple[bytes, ...] = ()) -> bytes:
    if allowed:
        if raw not in allowed:
            raise _bad(field, " or ".join(a.decode() for a in allowed), raw)
        return raw
    if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= digits):
        raise _bad(field, f"a base-10 integer of at most {digits} digits", raw)
    return raw


def _calls(field: str, raw: bytes) -> bytes:
    if re.fullmatch(_UINT8.encode(), raw) is None:
        raise _bad(field, "an integer from 0 to 255", raw)
    return raw


def _slow_row(stream_id: bytes, flat: Sequence[bytes]) -> bytes:
    if len(flat) % 2:
        raise InvalidUsageEntry("entry has an odd number of field/value items")
    it = iter(flat)
    entry: dict[bytes, bytes] = dict(zip(it, it, strict=True))
    missing = [f for f in FIELDS if f.encode() not in entry]
    if missing:
        raise InvalidUsageEntry(f"missing field(s): {', '.join(missing)}")
    v = {f: entry[f.encode()] for f in FIELDS}
    if re.fullmatch(_RID.encode(), v["rid"]) is None:
        raise _bad("rid", "[A-Za-z0-9_-]{8,64}", v["rid"])
    if re.fullmatch(_PERIOD.encode(), v["period"]) is None:
        raise _bad("period", "YYYY-MM", v["period"])
    if v["outcome"].decode(errors="replace") not in OUTCOMES:
        raise _bad("outcome", "one of " + ", ".join(OUTCOMES), v["outcome"])
    values = [
        v["rid"], _text("acct", v["acct"]), _text("key", v["key"]), _text("plan", v["plan"]),
        _text("model", v["model"]), _text("upstream", v["upstream"], allow_empty=True), v["period"], v["outcome"],
        _number("ts_start_ms", v["ts_start_ms"], 15), _number("ts_end_ms", v["ts_end_ms"], 15),
        _number("status", v["status"], 3), _calls("calls", v["calls"]), _calls("overage", v["overage"]),
        *(_number(f, v[f], 18) for f in ("pt", "ct", "cached", "reasoning", "cost_nanos", "latency_ms")),
        stream_id,
    ]
    return b"\t".join(values)
