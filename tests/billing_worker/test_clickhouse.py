from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver import exceptions as cc

from billing_worker.clickhouse import ClickHouse, classify
from billing_worker.errors import (
    ClickHouseQueryError,
    ClickHouseRejected,
    ClickHouseUnavailable,
    ConfigError,
)


@pytest.mark.parametrize(("exc", "kind"), [
    (cc.OperationalError("connection refused"), ClickHouseUnavailable),
    (ConnectionResetError("reset"), ClickHouseUnavailable),
    (cc.DatabaseError("Code: 241. MEMORY_LIMIT_EXCEEDED", code=241), ClickHouseUnavailable),
    (cc.DatabaseError("Code: 469. VIOLATED_CONSTRAINT", code=469, name="VIOLATED_CONSTRAINT"), ClickHouseRejected),
    (cc.DataError("value out of range"), ClickHouseRejected),
    (cc.DatabaseError("Code: 60. UNKNOWN_TABLE", code=60), ClickHouseQueryError),
])
def test_driver_errors_are_classified(exc: Exception, kind: type[Exception]) -> None:
    wrapped = classify(exc)
    assert type(wrapped) is kind and str(exc) in str(wrapped)


def test_real_errors_through_the_module(chdb_url: str, tmp_path: Path) -> None:
    with ClickHouse(chdb_url) as ch:
        assert ch.query("SELECT {n:UInt8} + 1", {"n": 1}) == [(2,)]
        assert ch.query_dicts("SELECT 1 AS a, 'x' AS b") == [{"a": 1, "b": "x"}]
        with pytest.raises(ClickHouseQueryError) as err:
            ch.query("SELECT * FROM no_such_table")
        assert err.value.code == 60 and err.value.name == "UNKNOWN_TABLE"
        ch.command("CREATE TABLE t (x UInt8, CONSTRAINT small CHECK x < 5) ENGINE = MergeTree ORDER BY x")
        with pytest.raises(ClickHouseRejected):
            ch.insert_tsv("t", ["x"], b"1\n9\n")
        with pytest.raises(ClickHouseRejected):
            ch.insert_tsv("t", ["x"], b"abc\n")
        ch.insert_rows("t", ["x"], [[1], [2]])
        assert ch.query("SELECT sum(x) FROM t") == [(3,)]
    # one engine per process at a time: another directory opens once the first is closed
    with ClickHouse(f"chdb://{tmp_path / 'other'}") as other:
        assert other.command("SELECT 1") == 1


def test_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CLICKHOUSE_URL"):
        ClickHouse("mysql://x")
    assert "secret" not in repr(ClickHouse("https://user:secret@ch.example:8443/db"))
    assert ClickHouse(f"chdb://{tmp_path}").embedded
