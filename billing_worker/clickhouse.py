"""The one ClickHouse access module: embedded chDB or a server, both through clickhouse-connect.

`CLICKHOUSE_URL` picks the engine: `chdb:///path` opens an in-process chDB data directory (one process
per directory; clickhouse-connect's sync client only), `http(s)://user:pass@host:8123/db` a server.
Driver exceptions are wrapped here into `billing_worker.errors`, classified for the callers:
`ClickHouseUnavailable` (retry later, keep the data), `ClickHouseRejected` (the data itself was refused)
and `ClickHouseQueryError` (schema or statement problem).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver import exceptions as cc_errors
from clickhouse_connect.driver.client import Client

from billing_worker.errors import (
    ClickHouseError,
    ClickHouseQueryError,
    ClickHouseRejected,
    ClickHouseUnavailable,
    ConfigError,
)

log = logging.getLogger(__name__)

# Errors caused by the inserted values themselves: bisecting the batch isolates the culprit.
DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469,  # VIOLATED_CONSTRAINT
})

# Errors that say "not now": overload, timeouts, replicas, disk. The data is fine; retry later.
TRANSIENT_ERROR_CODES = frozenset({
    159, 164, 202, 203, 209, 210, 236, 241, 242, 243, 252, 279, 285, 319, 394, 425, 473, 516, 999, 1000,
})


TSV_INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0, "input_format_parallel_parsing": 0}


def classify(exc: BaseException, message: str | None = None) -> ClickHouseError:
    """Wrap a driver exception into the package hierarchy (callers raise it `from None`)."""
    text = message or str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    name = getattr(exc, "name", None)
    code = code if isinstance(code, int) else None
    name = name if isinstance(name, str) else None
    if isinstance(exc, cc_errors.OperationalError | OSError | TimeoutError):
        return ClickHouseUnavailable(text, code=code, name=name)
    if isinstance(exc, cc_errors.DataError) or code in DATA_ERROR_CODES:
        return ClickHouseRejected(text, code=code, name=name)
    if code in TRANSIENT_ERROR_CODES:
        return ClickHouseUnavailable(text, code=code, name=name)
    return ClickHouseQueryError(text, code=code, name=name)


def _params(parameters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Server-side `{name:Type}` parameters; None (no binding at all) when there are none."""
    return dict(parameters) if parameters else None


class ClickHouse:
    """A lazily connected clickhouse-connect client; reconnects on the next call after a failure."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, send_receive_timeout_s: float = 300.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("chdb", "http", "https"):
            raise ConfigError(f"CLICKHOUSE_URL: unsupported scheme {parsed.scheme!r} (chdb, http or https)")
        self.url = url
        self.embedded = parsed.scheme == "chdb"
        self._connect_timeout_s = connect_timeout_s
        self._send_receive_timeout_s = send_receive_timeout_s
        self._client: Client | None = None

    def __repr__(self) -> str:
        parsed = urlparse(self.url)
        shown = parsed._replace(netloc=parsed.hostname or "", query="").geturl() if parsed.password else self.url
        return f"ClickHouse({shown!r})"

    def connect(self) -> Client:
        if self._client is not None:
            return self._client
        try:
            if self.embedded:
                path = urlparse(self.url).path
                if path and path not in ("memory", ":memory:"):
                    Path(path).mkdir(parents=True, exist_ok=True)
                self._client = clickhouse_connect.get_client(dsn=self.url)
            else:
                self._client = clickhouse_connect.get_client(
                    dsn=self.url, connect_timeout=self._connect_timeout_s,
                    send_receive_timeout=self._send_receive_timeout_s, query_retries=0)
        except Exception as exc:  # any failure to open is "unavailable": nothing was written
            hint = " (chDB: one process per data directory; is another one running?)" if self.embedded else ""
            raise ClickHouseUnavailable(f"cannot open ClickHouse at {self!r}{hint}: {exc}",
                                        code=getattr(exc, "code", None)) from None
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must never mask the error that led here
                log.debug("error closing the ClickHouse client", exc_info=True)

    def __enter__(self) -> ClickHouse:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _fail(self, exc: Exception) -> ClickHouseError:
        wrapped = classify(exc)
        if isinstance(wrapped, ClickHouseUnavailable):
            self.close()  # reconnect on the next call
        return wrapped

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        client = self.connect()
        try:
            return client.command(sql, parameters=_params(parameters))
        except Exception as exc:
            raise self._fail(exc) from None

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        client = self.connect()
        try:
            return [tuple(row) for row in client.query(sql, parameters=_params(parameters)).result_rows]
        except Exception as exc:
            raise self._fail(exc) from None

    def query_dicts(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        client = self.connect()
        try:
            result = client.query(sql, parameters=_params(parameters))
            names = result.column_names
            return [dict(zip(names, row, strict=True)) for row in result.result_rows]
        except Exception as exc:
            raise self._fail(exc) from None

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        client = self.connect()
        try:
            client.insert(table, list(rows), column_names=list(columns))
        except Exception as exc:
            raise self._fail(exc) from None

    def insert_tsv(self, table: str, columns: Sequence[str], data: bytes) -> None:
        """Insert pre-serialized TabSeparated rows with one INSERT (ClickHouse parses the values).

        `TSV_INSERT_SETTINGS`: the block is not pre-merged on insert (a replayed row is collapsed by
        ReplacingMergeTree's merges and by `FINAL` as before) and is parsed in one thread (a batch is a few MB:
        splitting it costs more than it saves); together about 10% less ClickHouse CPU per row."""
        client = self.connect()
        try:
            client.raw_insert(table, list(columns), insert_block=data, fmt="TabSeparated",
                              settings=TSV_INSERT_SETTINGS)
        except Exception as exc:
            raise self._fail(exc) from None
