"""One `make up` per var dir: the next start stops what a killed one left running; a live one is never doubled.

Real processes: `python -m gateway up` as a terminal runs it (tests/test_stop.py's `start_stack`), its real
redis-server and fake upstream; the kill is a SIGKILL of the `make up` process alone, so its children (in their own
sessions) outlive it as a `kill -9` leaves them. `make stack` (`python -m gateway.multi`) takes the same var dir lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.redis_server import free_port
from gateway.settings import ROOT
from gateway.up_lock import (
    LOCK_FILE_NAME,
    Process,
    UpRecord,
    children_path,
    is_running,
    process,
    terminate,
    var_dir_lock,
    write_children,
)
from tests.support import wait_http
from tests.test_multi_stack import PIDS, stack_env
from tests.test_stop import bad_lines, start_stack, stop_stack


def lock_held(path: Path) -> bool:
    """Whether another open file description holds the flock on `path`."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)           # closing also drops the lock taken here
    return False


def redis_servers_on(directory: Path) -> list[int]:
    """Pids of the live redis-server processes working in `directory` (Redis changes into its --dir, and rewrites
    its command line to "redis-server HOST:PORT")."""
    found = []
    for entry in Path("/proc").iterdir():
        proc = process(int(entry.name)) if entry.name.isdigit() else None
        if proc is not None and proc.cmdline and "redis-server" in proc.cmdline[0]:
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == str(directory):
                    found.append(proc.pid)
    return found


def recorded(var: Path) -> dict[str, Any]:
    return dict(json.loads(children_path(var).read_text()))


def up_env(tmp_path: Path) -> dict[str, str]:
    """The environment of `start_stack`, for a `python -m gateway up` run to completion here."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AIHUB_UPSTREAM_DEFAULT_URL", "AIHUB_UPSTREAM_DEFAULT_KEY", "AIHUB_ENV_FILE",
                        "DATABASE_URL")}
    env.update({"AIHUB_PORT": str(free_port()), "AIHUB_VAR_DIR": str(tmp_path / "var"),
                "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}", "AIHUB_SPOOL_DIR": str(tmp_path / "spool"),
                "PYTHONPATH": str(ROOT)})
    return env


def run_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "up"], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.fixture
def strays() -> Iterator[list[Process]]:
    """Processes a failing test could leave behind; each is stopped at the end if it still runs."""
    started: list[Process] = []
    yield started
    for stray in started:
        terminate(stray, 5)


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process, as one that got a recorded pid after its owner died."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    deadline = time.monotonic() + 5
    while (now := process(proc.pid)) is None or now.cmdline != ("sleep", "60"):     # read mid-exec: no cmdline yet
        assert time.monotonic() < deadline, f"sleep did not start: {now}"
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_killed_make_up_leaves_its_children_running_the_next_start_stops_them_and_keeps_the_data(
        tmp_path: Path, strays: list[Process]) -> None:
    var = tmp_path / "var"
    first = start_stack(tmp_path, free_port())
    try:
        record = recorded(var)
        assert record["parent"]["pid"] == first["proc"].pid
        children = {child["name"]: child["pid"] for child in record["children"]}
        assert set(children) == {"redis-server", "fake upstream"}
        strays.extend(p for p in map(process, children.values()) if p is not None)
        client = redis.Redis.from_url(json.loads((var / "runtime.json").read_text())["redis_url"])
        try:
            client.set("up:probe", "written before the kill")      # no wait: the stop's SIGTERM fsyncs it
        finally:
            client.close()
        first["proc"].kill()                # kill -9 of `make up` alone
        first["proc"].wait(10)
    finally:
        stop_stack(first)
    assert all(process(pid) is not None for pid in children.values())      # orphans
    assert lock_held(var / LOCK_FILE_NAME)                                  # which keep the var dir locked

    second = start_stack(tmp_path, free_port())
    try:
        assert all(process(pid) is None for pid in children.values())
        log = second["stderr"].read_text()
        assert (f"stopped the leftovers of a killed `make up` (pid {first['proc'].pid}) on {var}: "
                f"redis-server pid {children['redis-server']}, fake upstream pid {children['fake upstream']}") in log
        assert bad_lines(log) == [], log
        new_redis = {child["name"]: child["pid"] for child in recorded(var)["children"]}["redis-server"]
        assert redis_servers_on(var / "redis") == [new_redis]
        client = redis.Redis.from_url(json.loads((var / "runtime.json").read_text())["redis_url"])
        try:
            assert client.get("up:probe") == b"written before the kill"
        finally:
            client.close()
    finally:
        stop_stack(second)
    assert second["proc"].returncode == 0
    assert not children_path(var).exists() and not lock_held(var / LOCK_FILE_NAME)
    assert redis_servers_on(var / "redis") == []


def test_a_second_make_up_on_the_same_var_dir_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    first = start_stack(tmp_path, free_port())
    try:
        before = {name: (var / name).read_bytes() for name in ("runtime.json", children_path(var).name)}
        redis_pid = {child["name"]: child["pid"] for child in recorded(var)["children"]}["redis-server"]

        refused = run_up({**first["env"], "AIHUB_PORT": str(free_port())})

        assert refused.returncode == 2
        pid = first["proc"].pid
        assert refused.stderr.strip().splitlines() == [
            f"aihub: `make up` is already running on {var} (pid {pid}): stop it first (Ctrl-C in its terminal, "
            f"or `kill {pid}`), or start this one with another AIHUB_VAR_DIR. Nothing was started or changed."]
        assert {name: (var / name).read_bytes() for name in before} == before
        assert redis_servers_on(var / "redis") == [redis_pid]
        assert first["proc"].poll() is None
        wait_http(first["url"] + "/healthz", timeout=5)
    finally:
        stop_stack(first)
    assert first["proc"].returncode == 0


def test_a_recorded_pid_now_used_by_another_process_is_not_stopped(
        tmp_path: Path, stranger: subprocess.Popen[bytes]) -> None:
    var = tmp_path / "var"
    var.mkdir()
    now = process(stranger.pid)
    assert now is not None
    reused = Process(pid=stranger.pid, started=now.started - 1, name="redis-server",       # same pid, earlier start
                     cmdline=("/usr/bin/redis-server", "--dir", str(var / "redis")))
    killed_up = Process(pid=exited_pid(), started=1, cmdline=(sys.executable, "-m", "gateway", "up"), name="make up")
    write_children(children_path(var), UpRecord(parent=killed_up, children=(reused,)))

    with var_dir_lock(var) as lock:
        assert stranger.poll() is None
        assert lock.record.parent.pid == os.getpid() and lock.record.children == ()
        assert recorded(var)["parent"]["pid"] == os.getpid()
        assert lock_held(var / LOCK_FILE_NAME)
    assert stranger.poll() is None and is_running(now)
    assert not children_path(var).exists() and not lock_held(var / LOCK_FILE_NAME)


@pytest.mark.parametrize("with_record", [True, False], ids=["record-names-others", "no-record"])
def test_a_lock_no_record_explains_is_refused_and_its_holder_is_left_alone(tmp_path: Path, with_record: bool) -> None:
    var = tmp_path / "var"
    var.mkdir()
    lock_path = var / LOCK_FILE_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = subprocess.Popen(["sleep", "60"], pass_fds=(fd,), start_new_session=True)
    finally:
        os.close(fd)
    try:
        if with_record:
            killed_up = Process(pid=exited_pid(), started=1, cmdline=(sys.executable, "-m", "gateway", "up"))
            write_children(children_path(var), UpRecord(parent=killed_up))
        before = sorted(path.name for path in var.iterdir())

        refused = run_up(up_env(tmp_path))

        assert refused.returncode == 2
        [message] = refused.stderr.strip().splitlines()
        assert message.startswith(f"aihub: {lock_path} is locked by another process and ")
        assert f"find the holder with `fuser -v {lock_path}`" in message
        assert holder.poll() is None and lock_held(lock_path)
        assert sorted(path.name for path in var.iterdir()) == before
    finally:
        holder.kill()
        holder.wait(10)


def exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def lock_holders(lock_path: Path, pids: list[int]) -> list[int]:
    """Those of `pids` with an fd open on `lock_path`."""
    def holds(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return any(os.readlink(fd) == str(lock_path) for fd in Path(f"/proc/{pid}/fd").iterdir())
        return False
    return [pid for pid in pids if holds(pid)]


def test_make_stack_and_make_up_on_the_same_var_dir_refuse_each_other(tmp_path: Path, strays: list[Process]) -> None:
    """`make stack` holds the var dir as `make up` does (its Redis and fake upstream inherit the lock, its proxies and
    worker + API do not); while one runs, the other is refused with one line and exit status 2."""
    var = tmp_path / "var"
    env = stack_env(tmp_path)
    err = tmp_path / "stack.stderr.txt"
    with open(tmp_path / "stack.stdout.txt", "wb") as stdout, open(err, "wb") as stderr:
        stack = subprocess.Popen([sys.executable, "-m", "gateway.multi"], env=env, stdout=stdout, stderr=stderr,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "  upstream " not in (tmp_path / "stack.stdout.txt").read_text():
            assert stack.poll() is None, f"make stack exited: {err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "make stack did not print its banner"
            time.sleep(0.05)
        record = recorded(var)
        children = {child["name"]: child["pid"] for child in record["children"]}
        strays.extend(p for p in map(process, children.values()) if p is not None)
        assert (record["parent"]["name"], record["parent"]["pid"]) == ("make stack", stack.pid)
        assert set(children) == {"redis-server", "fake upstream"}
        out = (tmp_path / "stack.stdout.txt").read_text().splitlines()
        roles = [int(pid) for m in map(PIDS.match, out) if m for pid in m.group(2).replace(",", " ").split()]
        assert len(roles) == 3                                   # 2 proxies, the worker + API
        assert sorted(lock_holders(var / LOCK_FILE_NAME, [stack.pid, *children.values(), *roles])) \
            == sorted([stack.pid, *children.values()])

        refused = run_up(up_env(tmp_path))

        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"aihub: `make stack` is already running on {var} (pid {stack.pid}): stop it first (Ctrl-C in its "
            f"terminal, or `kill {stack.pid}`), or start this one with another AIHUB_VAR_DIR. Nothing was started "
            "or changed."]
        assert redis_servers_on(var / "redis") == [children["redis-server"]]
        assert stack.poll() is None
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGINT)          # Ctrl-C: proxies, worker + API, upstream, Redis stop in order
            try:
                stack.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait(10)
    assert stack.returncode == 0, err.read_text()[-3000:]
    assert not children_path(var).exists() and not lock_held(var / LOCK_FILE_NAME)

    with var_dir_lock(var):          # and the other way round: this process as a running `make up`
        refused = subprocess.run([sys.executable, "-m", "gateway.multi"], env=stack_env(tmp_path),
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        pid = os.getpid()
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"aihub stack: `make up` is already running on {var} (pid {pid}): stop it first (Ctrl-C in its "
            f"terminal, or `kill {pid}`), or start this one with another AIHUB_VAR_DIR. Nothing was started or "
            "changed."]
        assert recorded(var)["parent"]["pid"] == pid and redis_servers_on(var / "redis") == []


def start_multi(env: dict[str, str], tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`python -m gateway.multi` started as a terminal runs it, once it printed its banner: (process, stdout file,
    stderr file)."""
    out, err = tmp_path / f"{name}.stdout.txt", tmp_path / f"{name}.stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.multi"], env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while "  upstream " not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_multi(proc)
            pytest.fail(f"make stack did not print its banner: {err.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc, out, err


def stop_multi(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C (the stack stops in order), SIGKILL if it takes over a minute."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_killed_make_stack_takes_its_proxies_and_worker_along_and_the_next_start_succeeds(
        tmp_path: Path, strays: list[Process]) -> None:
    """kill -9 of `make stack`: its proxies and worker + API get SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop
    as on Ctrl-C, so they hold neither the ports nor chDB; its Redis and fake upstream stay for the next start on the
    same var dir and ports, which stops them and starts. chDB and the spool are the var dir's own (the defaults)."""
    var = tmp_path / "var"
    env = {k: v for k, v in stack_env(tmp_path).items() if k not in ("CLICKHOUSE_URL", "AIHUB_SPOOL_DIR")}
    first, out, _ = start_multi(env, tmp_path, "first")
    try:
        children = {child["name"]: child["pid"] for child in recorded(var)["children"]}
        strays.extend(p for p in map(process, children.values()) if p is not None)
        lines = out.read_text().splitlines()
        roles = [p for p in (process(int(pid)) for m in map(PIDS.match, lines) if m
                             for pid in m.group(2).replace(",", " ").split()) if p is not None]
        strays.extend(roles)
        assert len(roles) == 3                                   # 2 proxies, the worker + API
        assert json.loads((var / "runtime.json").read_text())["clickhouse_url"] == f"chdb://{var / 'chdb'}"
        first.kill()                    # kill -9 of `make stack` alone
        first.wait(10)
    finally:
        stop_multi(first)
    deadline = time.monotonic() + 15
    while running := [role.pid for role in roles if is_running(role)]:
        assert time.monotonic() < deadline, f"still running 15 s after the kill: {running}"
        time.sleep(0.1)
    assert all(process(pid) is not None for pid in children.values())      # Redis and upstream: left to the next

    second, _, err = start_multi(env, tmp_path, "second")         # same var dir, same ports
    try:
        log = err.read_text()
        assert f"stopped the leftovers of a killed `make stack` (pid {first.pid}) on {var}: " in log
        assert all(process(pid) is None for pid in children.values())
        assert bad_lines(log) == [], log
        with urllib.request.urlopen(f"http://127.0.0.1:{env['AIHUB_PORT']}/healthz", timeout=10) as response:
            assert response.status == 200
    finally:
        stop_multi(second)
    assert second.returncode == 0, err.read_text()[-3000:]
    assert (var / "chdb").is_dir() and not (tmp_path / "chdb").exists()
    assert not children_path(var).exists() and not lock_held(var / LOCK_FILE_NAME)


def test_the_children_record_is_private(tmp_path: Path) -> None:
    with var_dir_lock(tmp_path / "var") as lock:
        assert lock.path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("command", [["gateway", "up"], ["gateway.multi"]], ids=["up", "multi"])
@pytest.mark.parametrize("case", ["under-a-file", "lock-is-a-directory", "record-is-a-directory"])
def test_an_unusable_var_dir_fails_with_one_line(tmp_path: Path, command: list[str], case: str) -> None:
    (tmp_path / "afile").write_text("")
    var = tmp_path / "afile" / "var" if case == "under-a-file" else tmp_path / "var"
    if case == "lock-is-a-directory":
        (var / LOCK_FILE_NAME).mkdir(parents=True)
    if case == "record-is-a-directory":
        children_path(var).mkdir(parents=True)
    env = {**stack_env(tmp_path), "AIHUB_VAR_DIR": str(var)}

    done = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)

    assert done.returncode == 2, done.stderr[-3000:]
    why = {"under-a-file": "cannot create it: Not a directory",
           "lock-is-a-directory": f"cannot open {var / LOCK_FILE_NAME}: Is a directory",
           "record-is-a-directory": f"cannot write {children_path(var)}: Is a directory"}[case]
    prefix = "aihub stack" if command == ["gateway.multi"] else "aihub"
    assert done.stderr.strip().splitlines() == [
        f"{prefix}: cannot use {var} as the var dir: {why}. Set AIHUB_VAR_DIR to a writable directory. Nothing was "
        "started."]
    assert not (tmp_path / "var" / "redis").exists()


def test_an_existing_lock_file_that_may_not_be_written_still_locks(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    var = tmp_path / "var"
    var.mkdir()
    (var / LOCK_FILE_NAME).touch()
    real_open = os.open

    def no_write(path: Any, flags: int, *args: Any) -> int:        # as a file of another user, even as root
        if str(path).endswith(LOCK_FILE_NAME) and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", no_write)
    with var_dir_lock(var):
        monkeypatch.setattr(os, "open", real_open)
        assert lock_held(var / LOCK_FILE_NAME)
    assert not lock_held(var / LOCK_FILE_NAME)


def test_two_make_ups_on_two_var_dirs_run_side_by_side_each_with_its_own_chdb(tmp_path: Path) -> None:
    """What a refused start suggests (another AIHUB_VAR_DIR) works: chDB (one process per directory) and the settle
    spool default to the var dir's own."""
    runs: list[dict[str, Any]] = []
    try:
        for name in ("a", "b"):
            env = {k: v for k, v in up_env(tmp_path).items() if k not in ("CLICKHOUSE_URL", "AIHUB_SPOOL_DIR")}
            env["AIHUB_VAR_DIR"] = str(tmp_path / name)
            out = tmp_path / f"{name}.stdout.txt"
            with open(out, "wb") as stdout, open(tmp_path / f"{name}.stderr.txt", "wb") as stderr:
                proc = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=stdout,
                                        stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
            runs.append({"proc": proc, "url": f"http://127.0.0.1:{env['AIHUB_PORT']}", "env": env})
            deadline = time.monotonic() + 60
            while "Health:" not in out.read_text():
                assert proc.poll() is None, (tmp_path / f"{name}.stderr.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "make up did not print its banner"
                time.sleep(0.05)
        for name, run in zip(("a", "b"), runs, strict=True):
            wait_http(run["url"] + "/healthz", timeout=10)
            runtime = json.loads((tmp_path / name / "runtime.json").read_text())
            assert runtime["clickhouse_url"] == f"chdb://{tmp_path / name / 'chdb'}"
            assert (tmp_path / name / "chdb").is_dir()
    finally:
        for run in runs:
            stop_stack(run)
    assert [run["proc"].returncode for run in runs] == [0, 0]
