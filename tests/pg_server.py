"""A private PostgreSQL server for tests: a throwaway cluster (initdb) on a free loopback port, never a mock.

initdb and postgres refuse to run as root. Under root the cluster is owned by an unprivileged system user
(`aihubtest`, created on first use) and initdb/pg_ctl run through `runuser -u aihubtest --` (or `setpriv`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from gateway.redis_server import free_port

SUPERUSER = "aihub"
RUN_AS = "aihubtest"
BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresServerError(RuntimeError):
    """The private PostgreSQL server could not be started."""


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name   # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) for p in name.split(".") if p.isdigit()) or (0,)


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    found = [shutil.which(name) for name in BINARIES]
    if all(found):
        dirs = {Path(os.path.realpath(str(p))).parent for p in found}
        if len(dirs) == 1:   # all from one installation (PATH may hold symlinks into /usr/lib/postgresql)
            return dirs.pop()
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(bindir, name), os.X_OK) for name in BINARIES):
            return Path(bindir)
    raise PostgresServerError("PostgreSQL (initdb, pg_ctl, postgres) is not installed: run scripts/ensure-postgres")


def _ensure_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    proc = subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                           "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
    if proc.returncode not in (0, 9):   # 9: created meanwhile by a concurrent test process
        raise PostgresServerError(f"useradd {name} failed: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


def _as_user_prefix(user: pwd.struct_passwd) -> list[str]:
    runuser = shutil.which("runuser") or ("/usr/sbin/runuser" if os.path.exists("/usr/sbin/runuser") else None)
    if runuser:
        return [runuser, "-u", user.pw_name, "--"]
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
    raise PostgresServerError("running as root needs runuser or setpriv (util-linux) to drop privileges")


@dataclass
class PostgresServer:
    """One private PostgreSQL cluster; `start()` runs initdb and pg_ctl start, `close()` stops it and deletes it."""

    port: int = 0
    user: str = SUPERUSER
    workdir: Path | None = None
    bindir: Path | None = None
    _prefix: tuple[str, ...] = ()
    _started: bool = False

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def sockdir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "sock"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, name: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def _run(self, args: Sequence[str], timeout: float = 60) -> None:
        assert self.workdir is not None
        proc = subprocess.run([*self._prefix, *args], cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            log = self.workdir / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresServerError(f"{Path(args[0]).name} failed ({proc.returncode}): "
                                      f"{proc.stdout.strip()}\n{proc.stderr.strip()}\n{tail}".strip())

    def start(self) -> PostgresServer:
        self.bindir = bindir = find_bindir()
        self.workdir = Path(tempfile.mkdtemp(prefix="aihub-pg-"))
        try:
            self.sockdir.mkdir()
            if os.geteuid() == 0:
                owner = _ensure_user(RUN_AS)
                self._prefix = tuple(_as_user_prefix(owner))
                os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
                os.chown(self.sockdir, owner.pw_uid, owner.pw_gid)
            self._run([str(bindir / "initdb"), "-D", str(self.datadir), "-U", self.user, "--auth=trust",
                       "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            if not self.port:
                self.port = free_port()
            options = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off"
                       " -c synchronous_commit=off -c full_page_writes=off")
            self._started = True
            self._run([str(bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.workdir / "postgres.log"),
                       "-o", options, "-w", "-t", "30", "start"])
        except BaseException:
            self.close()
            raise
        return self

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a unique name when none is given) and return its SQLAlchemy URL."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with self._connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _kill(self) -> None:
        """Kill the postmaster named in postmaster.pid (our own child cluster) when pg_ctl stop failed."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        if self._started and self.workdir is not None and self.bindir is not None:
            self._started = False
            try:
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                          timeout=30)
            except (PostgresServerError, subprocess.TimeoutExpired):
                self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
