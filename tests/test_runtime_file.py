"""The runtime file of `make up` and how the admin CLI finds the running stack through it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.runtime import Runtime, read_runtime, remove_runtime, runtime_path, stack_environ, write_runtime


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def runtime(redis_url: str, pid: int | None = None) -> Runtime:
    return Runtime(pid=os.getpid() if pid is None else pid, redis_url=redis_url,
                   clickhouse_url="chdb:///somewhere/chdb", gateway_url="http://127.0.0.1:8080")


def test_written_atomically_read_back_and_removed_only_by_its_owner(tmp_path: Path) -> None:
    path = runtime_path(tmp_path / "var")
    write_runtime(path, runtime("redis://127.0.0.1:7001/0"))
    assert read_runtime(path) == runtime("redis://127.0.0.1:7001/0")
    assert json.loads(path.read_text())["redis_url"] == "redis://127.0.0.1:7001/0"
    assert [p.name for p in path.parent.iterdir()] == ["runtime.json"]      # no temporary left behind
    remove_runtime(path, os.getpid() + 1)                                   # another stack's stop
    assert path.exists()
    remove_runtime(path, os.getpid())
    assert not path.exists() and read_runtime(path) is None


def test_a_stale_or_broken_file_is_not_used(tmp_path: Path) -> None:
    path = runtime_path(tmp_path)
    write_runtime(path, runtime("redis://127.0.0.1:7001/0", pid=dead_pid()))
    assert read_runtime(path) is None
    environ, source = stack_environ({"AIHUB_VAR_DIR": str(tmp_path)})
    assert "REDIS_URL" not in environ and source.startswith("default")
    path.write_text("{not json")
    assert read_runtime(path) is None


def test_redis_url_wins_over_the_file_and_the_file_over_the_defaults(tmp_path: Path) -> None:
    write_runtime(runtime_path(tmp_path), runtime("redis://127.0.0.1:7001/0"))
    environ, source = stack_environ({"AIHUB_VAR_DIR": str(tmp_path), "REDIS_URL": "redis://elsewhere:6379/0"})
    assert environ["REDIS_URL"] == "redis://elsewhere:6379/0" and source == "REDIS_URL"
    assert "CLICKHOUSE_URL" not in environ
    environ, source = stack_environ({"AIHUB_VAR_DIR": str(tmp_path)})
    assert environ["REDIS_URL"] == "redis://127.0.0.1:7001/0"
    assert environ["CLICKHOUSE_URL"] == "chdb:///somewhere/chdb" and f"pid {os.getpid()}" in source
    environ, _ = stack_environ({"AIHUB_VAR_DIR": str(tmp_path), "CLICKHOUSE_URL": "http://ch:8123/db"})
    assert environ["CLICKHOUSE_URL"] == "http://ch:8123/db"


def test_admin_cli_uses_the_running_stack_and_says_which_redis(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("AIHUB_ENV_FILE", raising=False)
    monkeypatch.setenv("AIHUB_VAR_DIR", str(tmp_path))
    write_runtime(runtime_path(tmp_path), runtime(redis_url))
    assert main(["create-account", "--name", "Found", "--plan", "pro", "--id", "found", "--bank-transfer",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["account"] == "found"
    assert f"using Redis {redis_url} (the running `make up`, pid {os.getpid()}" in captured.err
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["show-account", "found"]) == 0
    assert f"using Redis {redis_url} (REDIS_URL)" in capsys.readouterr().err
