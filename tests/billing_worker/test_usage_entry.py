from __future__ import annotations

import pytest

from billing_worker.errors import InvalidUsageEntry
from billing_worker.usage_entry import COLUMNS, fields_of, to_row
from tests.billing_worker.usage_factory import make_entry


def flat(entry: dict[str, str]) -> list[bytes]:
    return [x.encode() for kv in entry.items() for x in kv]


def test_valid_entry_becomes_a_row_in_column_order() -> None:
    entry = make_entry(3)
    row = to_row(b"1793491200000-7", flat(entry)).split(b"\t")
    assert len(row) == len(COLUMNS)
    values = dict(zip(COLUMNS, (v.decode() for v in row), strict=True))
    assert values["key_id"] == entry["key"] and values["rid"] == entry["rid"]
    assert values["cost_nanos"] == entry["cost_nanos"] and values["stream_id"] == "1793491200000-7"


def test_field_order_and_extra_fields_do_not_matter() -> None:
    entry = make_entry(5)
    reordered = dict(reversed(list(entry.items()))) | {"future_field": "x"}
    assert to_row(b"1-0", flat(reordered)) == to_row(b"1-0", flat(entry))


def test_text_outside_plain_ascii_is_accepted_and_escaped() -> None:
    row = to_row(b"1-0", flat(make_entry(1, model="mistral-ü\\large", upstream="")))
    assert row.split(b"\t")[4] == "mistral-ü\\\\large".encode()
    assert row.split(b"\t")[5] == b""


@pytest.mark.parametrize(("override", "reason"), [
    ({"rid": None}, "missing field(s): rid"),
    ({"key": None, "plan": None}, "missing field(s): key, plan"),
    ({"rid": "short"}, "rid: expected"),
    ({"rid": "has space in it"}, "rid: expected"),
    ({"period": "2026-13"}, "period: expected YYYY-MM"),
    ({"outcome": "great"}, "outcome: expected one of"),
    ({"pt": "-5"}, "pt: expected a base-10 integer"),
    ({"ct": "1e3"}, "ct: expected a base-10 integer"),
    ({"cost_nanos": "1" * 19}, "cost_nanos: expected a base-10 integer of at most 18 digits"),
    ({"calls": "256"}, "calls: expected an integer from 0 to 255"),
    ({"overage": "-1"}, "overage: expected an integer from 0 to 255"),
    ({"status": "2000"}, "status: expected"),
    ({"acct": ""}, "acct: expected a non-empty value"),
    ({"model": "gpt\t4"}, "model: expected printable text"),
    ({"ts_start_ms": "１２"}, "ts_start_ms: expected a base-10 integer"),
])
def test_malformed_entries_are_refused_with_a_reason(override: dict[str, str | None], reason: str) -> None:
    with pytest.raises(InvalidUsageEntry) as err:
        to_row(b"1-0", flat(make_entry(2, **override)))
    assert err.value.reason.startswith(reason)


def test_undecodable_and_odd_entries() -> None:
    entry = flat(make_entry(2))
    entry[entry.index(b"acct") + 1] = b"\xff\xfe"
    with pytest.raises(InvalidUsageEntry, match="acct: expected UTF-8"):
        to_row(b"1-0", entry)
    with pytest.raises(InvalidUsageEntry, match="odd number"):
        to_row(b"1-0", entry[:-1])
    assert fields_of(entry)["acct"] == "\ufffd\ufffd"
