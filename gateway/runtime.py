"""The runtime file of a running `make up`: where its Redis, ClickHouse and gateway are.

`make up` writes `<AIHUB_VAR_DIR>/runtime.json` atomically once everything is started and removes it on a
clean stop. The admin CLI and the billing worker CLI read it when `REDIS_URL` is not set, so they talk to
the stack that is running rather than to whatever Redis listens on the default port. A file whose process
is gone (the stack was killed) is stale and ignored.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from gateway.settings import var_dir

FILE_NAME = "runtime.json"


@dataclass(frozen=True)
class Runtime:
    pid: int
    redis_url: str
    clickhouse_url: str
    gateway_url: str


def runtime_path(directory: Path) -> Path:
    return directory / FILE_NAME


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Written to a temporary file and renamed: a reader sees the old file, no file, or the whole new one. `mode`:
    the file's permissions (default: as the umask makes them). OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if mode is None:
        temporary.write_bytes(data)
    else:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)          # a temporary file left by an earlier run keeps its mode otherwise
            with open(fd, "wb", closefd=False) as out:
                out.write(data)
        finally:
            os.close(fd)
    os.replace(temporary, path)


def write_runtime(path: Path, runtime: Runtime) -> None:
    """Written atomically (`write_atomically`)."""
    write_atomically(path, orjson.dumps(asdict(runtime), option=orjson.OPT_INDENT_2))


def remove_runtime(path: Path, pid: int) -> None:
    """Removes the file if it is still the one of process `pid` (a newer stack may have replaced it)."""
    found = _load(path)
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # alive, another user's
        return True
    return True


def _load(path: Path) -> Runtime | None:
    try:
        raw = orjson.loads(path.read_bytes())
        return Runtime(pid=int(raw["pid"]), redis_url=str(raw["redis_url"]),
                       clickhouse_url=str(raw.get("clickhouse_url", "")), gateway_url=str(raw.get("gateway_url", "")))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def read_runtime(path: Path) -> Runtime | None:
    """The running stack's addresses; None when there is no file, it is unreadable, or its process is gone."""
    found = _load(path)
    if found is None or not pid_alive(found.pid):
        return None
    return found


def stack_environ(environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The environment a CLI reads its settings from, and where its Redis comes from (to tell the user).

    `REDIS_URL` set: used as is. Otherwise a running `make up`'s runtime file fills in `REDIS_URL` (and
    `CLICKHOUSE_URL` when that is not set either). Otherwise the settings' defaults apply.
    """
    env = dict(environ)
    if env.get("REDIS_URL"):
        return env, "REDIS_URL"
    path = runtime_path(var_dir(env))
    running = read_runtime(path)
    if running is None:
        return env, f"default: REDIS_URL is not set and no running `make up` is recorded in {path}"
    env["REDIS_URL"] = running.redis_url
    if not env.get("CLICKHOUSE_URL") and running.clickhouse_url:
        env["CLICKHOUSE_URL"] = running.clickhouse_url
    return env, f"the running `make up`, pid {running.pid}, from {path}"
