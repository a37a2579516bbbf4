"""`make stack` (gateway.multi): 2 proxy processes on one port (SO_REUSEPORT), the worker + API process, the private
Redis and the fake upstream; Ctrl-C stops them in order and the stop's last drain loads every answered call into
ClickHouse. And `make load`'s pipeline (benchmarks.load: stack, accounts, locust, stop, ClickHouse check) on a 5 s
run. Real processes throughout; locust only ever runs in a subprocess (its gevent patching stays there).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billing_worker.clickhouse import ClickHouse
from gateway.redis_server import free_port
from gateway.runtime import pid_alive
from gateway.settings import ROOT
from tests.test_stop import bad_lines, port_open

KEY_LINE = re.compile(r"^\s+(free|pro|enterprise)\s+(\w+)\s+(sk-ah_\S+)$")
PIDS = re.compile(r"^\s+(proxies|worker \+ API)\s.*?pids? ([\d, ]+)")
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AIHUB_UPSTREAM_DEFAULT_URL", "AIHUB_UPSTREAM_DEFAULT_KEY", "AIHUB_ENV_FILE",
                        "DATABASE_URL", "CLICKHOUSE_URL")}
    return env | {"AIHUB_PORT": str(free_port()), "AIHUB_API_PORT": str(free_port()), "AIHUB_PROXIES": "2",
                  "AIHUB_VAR_DIR": str(tmp_path / "var"), "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}",
                  "AIHUB_SPOOL_DIR": str(tmp_path / "spool"),
                  "AIHUB_DRAIN_INTERVAL_S": "600",      # only the stop's last drain loads the rows
                  "PYTHONPATH": str(ROOT)}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = stack_env(tmp_path)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.multi"], env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    info: dict[str, Any] = {"proc": proc, "env": env, "stdout": out, "stderr": err, "tmp": tmp_path,
                            "port": int(env["AIHUB_PORT"]), "api": f"http://127.0.0.1:{env['AIHUB_API_PORT']}"}
    try:
        deadline = time.monotonic() + 90
        while "  upstream " not in out.read_text():
            assert proc.poll() is None, f"make stack exited: {err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "make stack did not print its banner"
            time.sleep(0.05)
        lines = out.read_text().splitlines()
        info["keys"] = {m.group(1): m.group(3) for m in map(KEY_LINE.match, lines) if m}
        info["pids"] = {m.group(1): [int(p) for p in m.group(2).replace(",", " ").split()]
                        for m in map(PIDS.match, lines) if m}
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            for pids in info.get("pids", {}).values():
                for pid in pids:
                    if pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)


def serving_pid(conn: http.client.HTTPConnection, port: int, candidates: list[int]) -> int | None:
    """The process holding the server side of `conn` (open, keep-alive): its socket's inode in /proc/net/tcp
    (local = the public port, remote = the client's port), found among the candidates' file descriptors."""
    local_port = conn.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[2].endswith(f":{local_port:04X}"):
            inode = fields[9]
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def test_two_proxies_share_the_port_and_ctrl_c_loads_every_answered_call(stack: dict[str, Any]) -> None:
    proc, port, tmp = stack["proc"], stack["port"], stack["tmp"]
    proxies, [worker] = stack["pids"]["proxies"], stack["pids"]["worker + API"]
    assert len(proxies) == 2 and set(stack["keys"]) == {"free", "pro", "enterprise"}
    runtime = json.loads((tmp / "var" / "runtime.json").read_text())
    assert runtime["pid"] == proc.pid and runtime["gateway_url"] == f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(stack["api"] + "/healthz", timeout=10) as response:   # the API role's own port
        assert json.loads(response.read())["role"] == "api-worker"

    answered: dict[str, int] = {}          # request id -> proxy pid that served it
    for _ in range(60):                    # new connections, until the kernel gave both proxies some
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request("POST", "/v1/chat/completions", BODY, {
                "Authorization": f"Bearer {stack['keys']['pro']}", "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            pid = serving_pid(conn, port, proxies)
            assert pid is not None
            answered[response.headers["x-request-id"]] = pid
        finally:
            conn.close()
        if set(answered.values()) == set(proxies) and len(answered) >= 6:
            break
    assert set(answered.values()) == set(proxies)

    os.killpg(proc.pid, signal.SIGINT)     # Ctrl-C in the terminal: reaches the launcher only
    assert proc.wait(60) == 0
    log = stack["stderr"].read_text()
    assert bad_lines(log) == [], log
    assert log.index("stopping 2 proxies") < log.index("last drain before stopping") \
        < log.index("now the upstream and Redis")
    assert not (tmp / "var" / "runtime.json").exists()
    assert not [pid for pid in [*proxies, worker] if pid_alive(pid)]
    assert not port_open(runtime["redis_url"])           # Redis stopped after the worker's last drain
    with ClickHouse(f"chdb://{tmp / 'chdb'}") as ch:
        rows = dict(ch.query("SELECT rid, calls FROM usage_rows FINAL"))
    assert {rid: rows.get(rid) for rid in answered} == dict.fromkeys(answered, 1)


def test_make_load_pipeline_on_a_short_run(tmp_path: Path) -> None:
    """benchmarks.load with locust for 5 s: the report says every account's ClickHouse calls equal its 2xx."""
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "AIHUB_ENV_FILE"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.load", "--seconds", "5", "--users", "6",
                           "--spawn-rate", "6", "--out", str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "every account's ClickHouse calls equal its 2xx answers" in report
    assert (out / "locust_stats.csv").exists() and (out / "locust_failures.csv").exists()
    outcomes = json.loads((out / "outcomes.json").read_text())["outcomes"]
    assert sum(kinds.get("2xx", 0) for kinds in outcomes.values()) > 0
    assert not any(kind in ("5xx", "connection error") for kinds in outcomes.values() for kind in kinds)
