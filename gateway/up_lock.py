"""One `make up` or `make stack` per var dir: the lock on `<AIHUB_VAR_DIR>`, and the record of what holds it.

What it guards against: a killed `make up` (kill -9, a closed terminal) leaves its private Redis and fake upstream
running, in their own sessions; a second start would put a new Redis on the same append-only file directory
(`<AIHUB_VAR_DIR>/redis`) as the orphan, and the two would overwrite each other's data. `make stack` (gateway.multi)
uses the same directory and takes the same lock, so neither runs next to the other.

`up.lock`: the start holds an exclusive flock on it for its whole life (`var_dir_lock`) and passes the open fd to
its private Redis and fake upstream, so a child left running by a killed start keeps the directory locked. The
other processes `make stack` starts (proxies, worker + API) do not inherit it: they get SIGTERM from the kernel when
`make stack` dies (gateway.children), so they do not outlive it.

`up.children.json` (`UpRecord`): the process that holds the lock (`make up` or `make stack`) and the children it
passed the lock to, each with what tells it from a later process given the same pid (`Process`: start time and
command line from /proc, so Linux only; elsewhere no process is ever recognised), written atomically (mode 0600: it
holds command lines) when the lock is taken and after each child is up, removed once they stopped:

    {"parent":   {"name": "make up", "pid": 4242, "started": 1234567, "cmdline": ["python", "-m", "gateway", "up"]},
     "children": [{"name": "redis-server", "pid": 4250, ...}, {"name": "fake upstream", "pid": 4260, ...}]}

A start finding the recorded parent still running refuses (StackBusy, exit status 2); finding it killed, it stops
the recorded children that still run (in recorded order, so Redis first, with SIGTERM: it fsyncs its append-only
file) and goes on; a lock no record explains is never broken.

A var dir that cannot be created, or whose up.lock cannot be opened or up.children.json written (a path under a file,
a read-only file system), fails the start with one line (VarDirUnusable, exit status 2). An existing up.lock that
is not writable is fine: it is opened read-only (flock needs no write access).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from gateway.errors import GatewayError
from gateway.runtime import write_atomically

LOCK_FILE_NAME = "up.lock"
CHILDREN_FILE_NAME = "up.children.json"
LEFTOVER_GRACE_S = 10.0   # a leftover child's time to exit after SIGTERM (Redis: fsync its append-only file)
LOCK_WAIT_S = 5.0         # after stopping the leftovers: how long their lock may take to come free
log = logging.getLogger("aihub.up")


# -- processes and their identity ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Process:
    """A process as recorded: `pid`, `started` (clock ticks after boot, /proc/<pid>/stat field 22) and `cmdline`;
    two records are the same process when these three match. `name` ("redis-server") only labels it."""

    pid: int
    started: int
    cmdline: tuple[str, ...]
    name: str = field(default="", compare=False)


def process(pid: int, name: str = "") -> Process | None:
    """The live process `pid` as a `Process`; None when there is none, it is a zombie, or /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        fields = stat[stat.rindex(")") + 2:].split()      # the name in (...) may hold spaces
        if fields[0] in ("Z", "X"):
            return None
        started = int(fields[19])
    except (OSError, ValueError, IndexError):
        return None
    argv = tuple(arg.decode(errors="replace") for arg in cmdline.split(b"\0")[:-1])
    return Process(pid=pid, started=started, cmdline=argv, name=name)


def is_running(recorded: Process) -> bool:
    """Whether the process `recorded` still runs (not merely some process with its pid)."""
    return process(recorded.pid) == recorded


def terminate(recorded: Process, grace_s: float) -> bool:
    """Stops the process `recorded` if it still runs: SIGTERM (Redis fsyncs its append-only file and exits),
    SIGKILL after `grace_s`; returns once it is gone. True when it was running and is stopped; False when it was
    not running (a pid now used by another process is never signalled) or may not be signalled (another user's).
    Signals go through a pidfd opened before the identity check, so they cannot reach a later process."""
    if not is_running(recorded):
        return False
    try:
        pidfd = os.pidfd_open(recorded.pid)
    except ProcessLookupError:
        return False
    try:
        if not is_running(recorded):
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not select.select([pidfd], [], [], grace_s)[0]:      # readable once it exited
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [], 10)
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        return True
    finally:
        os.close(pidfd)


# -- up.children.json ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpRecord:
    """The content of `up.children.json`: the process holding the lock and the children it started so far."""

    parent: Process
    children: tuple[Process, ...] = ()


def children_path(directory: Path) -> Path:
    return directory / CHILDREN_FILE_NAME


def _process_json(proc: Process) -> dict[str, object]:
    return {"name": proc.name, "pid": proc.pid, "started": proc.started, "cmdline": list(proc.cmdline)}


def _process_from(raw: dict[str, object]) -> Process:
    cmdline = raw["cmdline"]
    if not isinstance(cmdline, list):
        raise TypeError("cmdline is not a list")
    return Process(pid=int(str(raw["pid"])), started=int(str(raw["started"])), cmdline=tuple(map(str, cmdline)),
                   name=str(raw.get("name", "")))


def write_children(path: Path, record: UpRecord) -> None:
    """Written atomically, like runtime.json (a temporary file renamed over it), with mode 0600. OSError when it
    cannot be written."""
    data = {"parent": _process_json(record.parent), "children": [_process_json(c) for c in record.children]}
    write_atomically(path, orjson.dumps(data, option=orjson.OPT_INDENT_2), mode=0o600)


def read_children(path: Path) -> UpRecord | None:
    """The record; None when there is none or it is unreadable."""
    try:
        raw = orjson.loads(path.read_bytes())
        return UpRecord(parent=_process_from(raw["parent"]),
                        children=tuple(_process_from(child) for child in raw["children"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def remove_children(path: Path, pid: int) -> None:
    """Removes the record if it is still the one of parent process `pid`."""
    found = read_children(path)
    if found is not None and found.parent.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- up.lock --------------------------------------------------------------------------------------------------
class StackBusy(GatewayError):
    """The var dir is taken: its `make up` or `make stack` still runs, or an unknown process holds its lock. The
    message names the process or the locked file and what to do; nothing was started or stopped."""

    code = "stack_busy"


class VarDirUnusable(GatewayError):
    """The var dir cannot be created, or its up.lock opened, or its up.children.json written; the message names the
    path and the reason. Nothing was started."""

    code = "var_dir_unusable"

    @classmethod
    def of(cls, directory: Path, what: str, exc: OSError) -> VarDirUnusable:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return cls(f"cannot use {directory} as the var dir: {what}: {reason}. Set AIHUB_VAR_DIR to a writable "
                   "directory. Nothing was started.")


@dataclass
class VarDirLock:
    """A start's hold on its var dir: `fd`, the open `up.lock` under an exclusive flock, passed to each child it
    records; `record`, what `path` (up.children.json) says."""

    fd: int
    path: Path
    record: UpRecord

    def add_child(self, pid: int, name: str) -> None:
        """Records a started child (once it serves: its command line is the one it runs); nothing if it exited.
        VarDirUnusable when the record cannot be written."""
        child = process(pid, name)
        if child is not None:
            self.record = replace(self.record, children=(*self.record.children, child))
            self.write()

    def write(self) -> None:
        try:
            write_children(self.path, self.record)
        except OSError as exc:
            raise VarDirUnusable.of(self.path.parent, f"cannot write {self.path}", exc) from None


def _owner(record: UpRecord) -> str:
    return record.parent.name or "make up"


def _flock(fd: int, wait_s: float = 0.0) -> bool:
    """Takes the exclusive lock on `fd`, trying for up to `wait_s`; False when another process still holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _already_running(directory: Path, record: UpRecord | None) -> StackBusy | None:
    """The refusal when the start recorded in `directory` (`record`, as read) still runs; None when it does not."""
    if record is None or not is_running(record.parent):
        return None
    pid = record.parent.pid
    return StackBusy(f"`{_owner(record)}` is already running on {directory} (pid {pid}): stop it first (Ctrl-C in "
                     f"its terminal, or `kill {pid}`), or start this one with another AIHUB_VAR_DIR. Nothing was "
                     "started or changed.")


def _claim(fd: int, directory: Path) -> None:
    """Locks `fd` (the var dir's up.lock), first stopping the children a killed start left running.
    StackBusy when the recorded start still runs, or when the lock stays held by a process no record names."""
    locked = _flock(fd)
    record = read_children(children_path(directory))
    busy = _already_running(directory, record)
    if busy is not None:
        raise busy
    stopped = [child for child in record.children if terminate(child, LEFTOVER_GRACE_S)] if record else []
    if record is not None and stopped:
        log.warning("stopped the leftovers of a killed `%s` (pid %d) on %s: %s", _owner(record), record.parent.pid,
                    directory, ", ".join(f"{child.name} pid {child.pid}" for child in stopped))
    if not locked and not _flock(fd, LOCK_WAIT_S if stopped else 0.0):
        busy = _already_running(directory, read_children(children_path(directory)))   # another start took it
        if busy is not None:
            raise busy
        lock_path = directory / LOCK_FILE_NAME
        why = (f"no running `{_owner(record)}` nor any process it recorded" if record is not None
               else f"there is no {children_path(directory).name} naming its `make up` or `make stack`")
        raise StackBusy(f"{lock_path} is locked by another process and {why}, so it was left running: find the "
                        f"holder with `fuser -v {lock_path}`, stop it if it is a leftover of an earlier `make up` or "
                        "`make stack`, and start again (or start with another AIHUB_VAR_DIR).")


def _open_lock(directory: Path) -> int:
    """The var dir (created if missing) and its up.lock, open: read-write, created if missing, or read-only when it
    exists but may not be written. VarDirUnusable otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VarDirUnusable.of(directory, "cannot create it", exc) from None
    path = directory / LOCK_FILE_NAME
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            with contextlib.suppress(OSError):
                return os.open(path, os.O_RDONLY)            # an existing lock file suffices: flock needs no write
        raise VarDirUnusable.of(directory, f"cannot open {path}", exc) from None


@contextlib.contextmanager
def var_dir_lock(directory: Path, owner: str = "make up") -> Iterator[VarDirLock]:
    """Holds the var dir for the life of the start `owner` ("make up", "make stack": its name in the record and in
    the messages of a refused start; see `_claim`), creating it if missing; the children record is removed at the
    end when none of the children still runs. VarDirUnusable when the directory cannot be used."""
    fd = _open_lock(directory)
    try:
        _claim(fd, directory)
        me = process(os.getpid(), owner) or Process(pid=os.getpid(), started=0, cmdline=(), name=owner)
        lock = VarDirLock(fd=fd, path=children_path(directory), record=UpRecord(parent=me))
        lock.write()
        try:
            yield lock
        finally:
            if not any(is_running(child) for child in lock.record.children):
                remove_children(lock.path, os.getpid())
    finally:
        os.close(fd)     # unlocks, unless a child left running still holds it
