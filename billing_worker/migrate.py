"""Schema migration runner: applies `clickhouse/migrations/NNNN_name.sql` in order, once each.

`clickhouse/schema_migrations.sql` (the bookkeeping table) runs first on every call. Each applied file
is recorded with its SHA-256; a file changed after it was applied is refused. Statements are written
`IF NOT EXISTS`, so a run interrupted halfway through a file is simply run again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from billing_worker.clickhouse import ClickHouse
from billing_worker.cluster_sql import ClusterRenderer, code_of
from billing_worker.errors import MigrationError

BOOTSTRAP_FILE = "schema_migrations.sql"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|\Z)")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclass
class MigrationReport:
    applied: list[Migration] = field(default_factory=list)
    already_applied: list[Migration] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)


def split_statements(sql: str) -> list[str]:
    """Split a file on `;` at the end of a line; comment-only chunks are dropped."""
    parts = (part.strip() for part in _STATEMENT_END.split(sql))
    return [part for part in parts if code_of(part)]


def load_migrations(schema_dir: Path) -> list[Migration]:
    directory = schema_dir / "migrations"
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_NAME.match(path.name)
        if m is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        version = int(m.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        migrations[version] = Migration(version, path.stem, path.read_text())
    return [migrations[v] for v in sorted(migrations)]


def load_bootstrap(schema_dir: Path) -> Migration:
    return Migration(0, "schema_migrations", (schema_dir / BOOTSTRAP_FILE).read_text())


def render(migration: Migration, renderer: ClusterRenderer | None) -> list[str]:
    if renderer is None:
        return [code_of(s) for s in migration.statements]
    return [out for s in migration.statements for out in renderer.render(s)]


def render_all(schema_dir: Path, cluster: str = "") -> list[tuple[Migration, list[str]]]:
    """Every file (bootstrap first) with the statements that apply it, for one node or a cluster."""
    renderer = ClusterRenderer(cluster) if cluster else None
    files = [load_bootstrap(schema_dir), *load_migrations(schema_dir)]
    return [(m, render(m, renderer)) for m in files]


def applied_checksums(ch: ClickHouse) -> dict[int, str]:
    rows = ch.query("SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version")
    return {int(version): str(checksum) for version, checksum in rows}


def migrate(ch: ClickHouse, schema_dir: Path, *, cluster: str = "") -> MigrationReport:
    """Apply pending files in version order and record each; safe to run any number of times."""
    report = MigrationReport()
    rendered = render_all(schema_dir, cluster)
    (_, bootstrap_statements), files = rendered[0], rendered[1:]
    for statement in bootstrap_statements:
        ch.command(statement)
    done = applied_checksums(ch)
    for migration, statements in files:
        recorded = done.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(f"{migration.name}.sql changed after it was applied "
                                     f"(recorded sha256 {recorded[:12]}, file {migration.checksum[:12]}); "
                                     "add a new migration instead")
            report.already_applied.append(migration)
            continue
        for statement in statements:
            ch.command(statement)
            report.statements.append(statement)
        ch.insert_rows("schema_migrations", ["version", "name", "checksum"],
                       [[migration.version, migration.name, migration.checksum]])
        report.applied.append(migration)
    return report
