"""The `database_url` fixture gives a working empty database on SQLite and on a private PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa


def test_table_roundtrip(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL)"))
            conn.execute(sa.text("INSERT INTO items (id, name) VALUES (1, 'alpha'), (2, 'beta')"))
            rows = conn.execute(sa.text("SELECT id, name FROM items ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [(1, "alpha"), (2, "beta")]
    finally:
        engine.dispose()


def test_postgresql_is_real(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version()")).scalar_one()
            assert version.startswith("PostgreSQL 15"), version
        with engine.connect() as writer, engine.connect() as reader:
            writer.execute(sa.text("CREATE TABLE t (v INTEGER)"))
            writer.execute(sa.text("INSERT INTO t VALUES (42)"))
            assert reader.execute(sa.text("SELECT to_regclass('t')")).scalar_one() is None   # not yet committed
            reader.rollback()
            writer.commit()
            assert reader.execute(sa.text("SELECT v FROM t")).scalar_one() == 42
    finally:
        engine.dispose()
