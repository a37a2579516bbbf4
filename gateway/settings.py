"""Gateway settings, read once from the environment (and an optional env file) at start-up.

A missing or malformed value raises ConfigError naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gateway.errors import ConfigError

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def parse_bool(value: str) -> bool:
    """1/true/yes/on or 0/false/no/off (any case); ValueError otherwise. Shared by every settings module."""
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        values[name.strip()] = value.strip().strip('"').strip("'")
    return values


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment (or `environ`) over the values of the file named by AIHUB_ENV_FILE, if any."""
    base = dict(os.environ if environ is None else environ)
    source: dict[str, str] = {}
    env_file = base.get("AIHUB_ENV_FILE")
    if env_file:
        source.update(read_env_file(Path(env_file)))
    source.update(base)
    return source


def var_dir(environ: Mapping[str, str]) -> Path:
    """AIHUB_VAR_DIR: local state of `make up` (private Redis, runtime file, and by default the settle spool and
    chDB); default `<repo>/.var`."""
    return Path(environ.get("AIHUB_VAR_DIR") or ROOT / ".var").absolute()   # children may run from another directory


def upstream_base(url: str) -> str:
    """`AIHUB_UPSTREAM_<NAME>_URL` as a base the `/v1/...` paths are appended to: an OpenAI-style base URL
    ending in `/v1` (what the openai SDK takes) is accepted without doubling it."""
    return url.rstrip("/").removesuffix("/v1")


def header_names(value: str) -> frozenset[str]:
    """A comma-separated list of header names, lowercased; ValueError for a name that is not a token."""
    names = frozenset(n.strip().lower() for n in value.split(",") if n.strip())
    bad = [n for n in names if not n.replace("-", "").isalnum() or not n.isascii()]
    if bad:
        raise ValueError(f"not header names: {', '.join(sorted(bad))}")
    return names


class Env:
    """Typed reads from a mapping: `env.get("X", int, 3)`; errors name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def get(self, name: str, cast: Callable[[str], T], default: T | None = None) -> T:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            return default
        try:
            return cast(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}={raw!r} is malformed: {exc}") from None

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value

    def prefixed(self, prefix: str) -> dict[str, str]:
        return {k[len(prefix):]: v for k, v in self.environ.items() if k.startswith(prefix) and v}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    catalog_path: Path = ROOT / "config" / "catalog.toml"
    upstream_urls: dict[str, str] = field(default_factory=dict)
    upstream_keys: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    upstream_pool_size: int = 256
    quota_checks: bool = True
    redis_failure_policy: str = "closed"
    redis_timeout_s: float = 1.0
    spool_dir: Path = ROOT / ".var" / "spool"
    shards: int = 16
    reservation_ttl_s: int = 600
    period_grace_days: int = 62
    forward_headers: frozenset[str] = frozenset()   # request headers forwarded beyond gateway.headers.FORWARDED
    shutdown_grace_s: float = 30.0
    var_dir: Path = ROOT / ".var"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environment(environ))
        urls = {k[: -len("_URL")].lower(): v for k, v in env.prefixed("AIHUB_UPSTREAM_").items()
                if k.endswith("_URL")}
        keys = {k[: -len("_KEY")].lower(): v for k, v in env.prefixed("AIHUB_UPSTREAM_").items()
                if k.endswith("_KEY")}
        settings = cls(
            host=env.get("AIHUB_HOST", str, cls.host),
            port=env.get("AIHUB_PORT", int, cls.port),
            redis_url=env.get("REDIS_URL", str, cls.redis_url),
            redis_cluster=env.get("REDIS_CLUSTER", parse_bool, False),
            catalog_path=env.get("AIHUB_CATALOG", Path, ROOT / "config" / "catalog.toml"),
            upstream_urls={k: upstream_base(v) for k, v in urls.items()},
            upstream_keys=keys,
            max_body_bytes=env.get("AIHUB_MAX_BODY_BYTES", int, cls.max_body_bytes),
            connect_timeout_s=env.get("AIHUB_CONNECT_TIMEOUT_S", float, cls.connect_timeout_s),
            read_timeout_s=env.get("AIHUB_READ_TIMEOUT_S", float, cls.read_timeout_s),
            upstream_pool_size=env.get("AIHUB_UPSTREAM_POOL_SIZE", int, cls.upstream_pool_size),
            quota_checks=env.get("AIHUB_QUOTA_CHECKS", parse_bool, True),
            redis_failure_policy=env.choice("AIHUB_REDIS_FAILURE_POLICY", ("closed", "open"), "closed"),
            redis_timeout_s=env.get("AIHUB_REDIS_TIMEOUT_S", float, cls.redis_timeout_s),
            spool_dir=env.get("AIHUB_SPOOL_DIR", Path, var_dir(env.environ) / "spool"),    # one per var dir
            shards=env.get("AIHUB_SHARDS", int, cls.shards),
            reservation_ttl_s=env.get("AIHUB_RESERVATION_TTL_S", int, cls.reservation_ttl_s),
            period_grace_days=env.get("AIHUB_PERIOD_GRACE_DAYS", int, cls.period_grace_days),
            forward_headers=env.get("AIHUB_FORWARD_HEADERS", header_names, frozenset()),
            shutdown_grace_s=env.get("AIHUB_SHUTDOWN_GRACE_S", float, cls.shutdown_grace_s),
            var_dir=var_dir(env.environ),
        )
        if not 0 <= settings.shutdown_grace_s < float("inf"):
            raise ConfigError(f"AIHUB_SHUTDOWN_GRACE_S={settings.shutdown_grace_s} must be seconds, zero or more")
        for name, value in (("AIHUB_PORT", settings.port), ("AIHUB_MAX_BODY_BYTES", settings.max_body_bytes),
                            ("AIHUB_SHARDS", settings.shards),
                            ("AIHUB_RESERVATION_TTL_S", settings.reservation_ttl_s),
                            ("AIHUB_PERIOD_GRACE_DAYS", settings.period_grace_days)):
            if value < 0 or (name != "AIHUB_PORT" and value == 0):
                raise ConfigError(f"{name}={value} must be positive")
        return settings
