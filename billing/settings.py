"""The billing domain's settings, read once from the environment: where the system-of-record database is.

`DATABASE_URL`: a SQLAlchemy URL. Default: a SQLite file `<AIHUB_VAR_DIR>/aihub.db` (nothing to install);
production: `postgresql+psycopg://user:password@host:5432/aihub`. A malformed value fails with the variable's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.errors import ConfigError
from gateway.settings import environment, var_dir

SUPPORTED = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Settings:
    database_url: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = environment(environ)
        url = env.get("DATABASE_URL") or f"sqlite:///{var_dir(env) / 'aihub.db'}"
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError as exc:
            raise ConfigError(f"DATABASE_URL={url!r} is malformed: {exc}") from None
        if backend not in SUPPORTED:
            raise ConfigError(f"DATABASE_URL={url!r}: the database must be one of {', '.join(SUPPORTED)}")
        return cls(database_url=url)
