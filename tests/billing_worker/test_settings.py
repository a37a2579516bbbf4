from __future__ import annotations

from pathlib import Path

import pytest

from billing_worker.errors import ConfigError
from billing_worker.settings import DEFAULT_CLICKHOUSE_URL, REPO_ROOT, Settings


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert s.shards == 16
    assert s.clickhouse_url == DEFAULT_CLICKHOUSE_URL == f"chdb://{REPO_ROOT}/.var/chdb"
    assert s.drain_group == "drain"
    assert s.drain_consumer  # host-pid
    assert s.anomaly_factor == 3.0


def test_chdb_is_the_var_dirs_own_unless_set(tmp_path: Path) -> None:
    """chDB allows one process per data directory: each var dir (each `make up` or `make stack`) has its own."""
    assert Settings.from_env({"AIHUB_VAR_DIR": str(tmp_path)}).clickhouse_url == f"chdb://{tmp_path / 'chdb'}"
    assert Settings.from_env({"AIHUB_VAR_DIR": str(tmp_path), "CLICKHOUSE_URL": "chdb:///elsewhere"}) \
        .clickhouse_url == "chdb:///elsewhere"


def test_values_are_parsed_and_typed() -> None:
    s = Settings.from_env({
        "REDIS_URL": "redis://h:1/2", "CLICKHOUSE_URL": "http://u:p@ch:8123/db", "AIHUB_SHARDS": "4",
        "AIHUB_DRAIN_BATCH_SIZE": "77", "AIHUB_DRAIN_TRIM": "no", "AIHUB_DRAIN_BACKOFF_S": "0.25",
        "AIHUB_DRAIN_FAULT": "kill-after-insert", "AIHUB_DRAIN_CONSUMER": "w1",
    })
    assert (s.redis_url, s.clickhouse_url) == ("redis://h:1/2", "http://u:p@ch:8123/db")
    assert (s.shards, s.drain_batch_size) == (4, 77)
    assert s.drain_trim is False and s.drain_backoff_s == 0.25 and s.drain_fault == "kill-after-insert"
    assert s.consumer == "w1"


@pytest.mark.parametrize(("name", "value"), [
    ("AIHUB_SHARDS", "zero"), ("AIHUB_SHARDS", "0"), ("AIHUB_SHARDS", "101"), ("CLICKHOUSE_URL", "mysql://x"),
    ("CLICKHOUSE_URL", "http://"), ("AIHUB_DRAIN_TRIM", "maybe"), ("AIHUB_DRAIN_BACKOFF_S", "-1"),
    ("AIHUB_DRAIN_BACKOFF_S", "nan"), ("AIHUB_DRAIN_FAULT", "explode"), ("AIHUB_DRAIN_BATCH_SIZE", "1.5"),
])
def test_malformed_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
