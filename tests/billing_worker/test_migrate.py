from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from billing_worker.clickhouse import ClickHouse
from billing_worker.cluster_sql import ClusterRenderer
from billing_worker.errors import MigrationError
from billing_worker.migrate import load_migrations, migrate, render_all, split_statements
from billing_worker.settings import REPO_ROOT, Settings

SCHEMA = REPO_ROOT / "clickhouse"


def test_migrate_applies_in_order_records_and_is_idempotent(chdb_url: str) -> None:
    with ClickHouse(chdb_url) as ch:
        first = migrate(ch, SCHEMA)
        assert [m.version for m in first.applied] == [m.version for m in load_migrations(SCHEMA)] == [1, 2]
        second = migrate(ch, SCHEMA)
        assert second.applied == [] and len(second.already_applied) == 2
        recorded = ch.query("SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version")
        assert [(v, n) for v, n, _ in recorded] == [(1, "0001_usage_rows"), (2, "0002_usage_daily")]
        tables = {t for (t,) in ch.query("SELECT name FROM system.tables WHERE database = currentDatabase()")}
        assert {"usage_rows", "usage_daily", "schema_migrations"} <= tables


def test_new_file_is_applied_and_edited_applied_file_is_refused(chdb_url: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    shutil.copytree(SCHEMA, schema)
    with ClickHouse(chdb_url) as ch:
        migrate(ch, schema)
        (schema / "migrations" / "0003_extra.sql").write_text(
            "-- a later change\nALTER TABLE usage_rows ADD COLUMN IF NOT EXISTS region LowCardinality(String);\n")
        assert [m.name for m in migrate(ch, schema).applied] == ["0003_extra"]
        assert ch.query("SELECT count() FROM system.columns WHERE table = 'usage_rows' AND name = 'region'")[0][0] == 1
        first = schema / "migrations" / "0001_usage_rows.sql"
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match=r"0001_usage_rows\.sql changed after it was applied"):
            migrate(ch, schema)


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lowercase_name"):
        load_migrations(tmp_path)


def test_split_statements_ignores_comment_only_chunks() -> None:
    sql = "-- header\nCREATE TABLE a (x UInt8) ENGINE = MergeTree ORDER BY x;\n-- trailing comment;\n"
    assert split_statements(sql) == ["-- header\nCREATE TABLE a (x UInt8) ENGINE = MergeTree ORDER BY x"]


def test_cluster_variant_of_the_schema() -> None:
    rendered = {m.name: statements for m, statements in render_all(SCHEMA, "prod")}
    bookkeeping, = rendered["schema_migrations"]
    assert "CREATE TABLE IF NOT EXISTS schema_migrations ON CLUSTER 'prod'" in bookkeeping
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/schema_migrations', "
            "'{replica}', applied_at)") in bookkeeping
    local, distributed = rendered["0001_usage_rows"]
    assert local.startswith("CREATE TABLE IF NOT EXISTS usage_rows_local ON CLUSTER 'prod'\n(")
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/usage_rows_local', "
            "'{replica}', ingested_at)\nPARTITION BY period\nORDER BY (acct, period, rid)") in local
    assert distributed == ("CREATE TABLE IF NOT EXISTS usage_rows ON CLUSTER 'prod' AS usage_rows_local\n"
                           "ENGINE = Distributed('prod', currentDatabase(), usage_rows_local, cityHash64(acct))")
    assert rendered["0002_usage_daily"][1].endswith("usage_daily_local, cityHash64(acct))")
    assert all("--" not in s for statements in rendered.values() for s in statements)


def test_cluster_rewrites_alters_views_and_drops() -> None:
    r = ClusterRenderer("c1")
    r.render("-- cluster: distributed by cityHash64(acct)\n"
             "CREATE TABLE t (acct String) ENGINE = MergeTree ORDER BY acct")
    assert r.render("ALTER TABLE t ADD COLUMN x UInt8") == [
        "ALTER TABLE t_local ON CLUSTER 'c1' ADD COLUMN x UInt8", "ALTER TABLE t ON CLUSTER 'c1' ADD COLUMN x UInt8"]
    assert r.render("ALTER TABLE t MODIFY TTL day + INTERVAL 1 YEAR") == [
        "ALTER TABLE t_local ON CLUSTER 'c1' MODIFY TTL day + INTERVAL 1 YEAR"]
    assert r.render("ALTER TABLE other DELETE WHERE 1") == ["ALTER TABLE other ON CLUSTER 'c1' DELETE WHERE 1"]
    assert r.render("CREATE VIEW IF NOT EXISTS v AS SELECT 1") == [
        "CREATE VIEW IF NOT EXISTS v ON CLUSTER 'c1' AS SELECT 1"]
    assert r.render("DROP TABLE IF EXISTS t") == [
        "DROP TABLE IF EXISTS t_local ON CLUSTER 'c1'", "DROP TABLE IF EXISTS t ON CLUSTER 'c1'"]
    assert r.render("INSERT INTO t SELECT 'a'") == ["INSERT INTO t SELECT 'a'"]
    with pytest.raises(MigrationError, match="no cluster rewrite"):
        r.render("RENAME TABLE t TO u")
    with pytest.raises(MigrationError, match="only \\*MergeTree"):
        r.render("CREATE TABLE m (x UInt8) ENGINE = Memory")
    with pytest.raises(MigrationError, match="invalid cluster name"):
        ClusterRenderer("bad name'")


def test_single_node_sql_is_the_files_without_comments() -> None:
    (_, statements), *_ = render_all(Settings().schema_dir)
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS schema_migrations\n(")
