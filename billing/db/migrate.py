"""Applies the Alembic migrations in billing/db/migrations to a database (idempotent: safe to run twice)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from billing.errors import StoreUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrades to the newest revision; returns (revision before, revision after)."""
    try:
        with engine.connect() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(_config(engine), "head")
        with engine.connect() as connection:
            after = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise StoreUnavailable(f"the database is not reachable or could not be migrated "
                               f"({engine.url.render_as_string(hide_password=True)}): {detail}") from None
    return before, str(after)


def head() -> str:
    return str(ScriptDirectory.from_config(_config(None)).get_current_head())   # type: ignore[arg-type]
