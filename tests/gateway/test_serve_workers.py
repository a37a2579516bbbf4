"""`aihub serve --workers N`: N processes answer on one port, and a stop loses nothing.

Real processes (`python -m gateway serve --workers 2`), real redis-server, the fake upstream. Which worker holds
a connection is read from /proc (the server side of each established connection and the process owning it).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.accounts import AccountStore
from gateway.redis_server import free_port
from gateway.settings import ROOT
from tests.conftest import UPSTREAM_KEY
from tests.support import process_env, settings_for, wait_http
from tests.test_stop import bad_lines, chat, in_background, port_open, usage_rows

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def wait_serving(self, count: int, timeout: float = 30.0) -> None:
        """Until the supervisor logged that all `count` workers accept connections."""
        deadline = time.monotonic() + timeout
        while f"{count} workers serve" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def workers(self, count: int = 2, timeout: float = 20.0) -> list[int]:
        """The supervisor's children, once there are `count`."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
            if len(pids) == count:
                return pids
            assert time.monotonic() < deadline, f"expected {count} workers, found {pids}"
            time.sleep(0.05)


@pytest.fixture
def serve_workers(redis_url: str, upstream: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(workers: int = 2, expect_ready: bool = True, **env: str) -> Served:
        settings = settings_for(redis_url, upstream.url, UPSTREAM_KEY, tmp_path)
        port = int(env.pop("AIHUB_PORT", 0)) or free_port()
        full = {**os.environ, **process_env(settings), "AIHUB_PORT": str(port), "PYTHONPATH": str(ROOT), **env}
        full.pop("AIHUB_ENV_FILE", None)
        log = tmp_path / f"serve-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", str(workers)], env=full,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        started.append(proc)
        served = Served(proc, port, log)
        if expect_ready:
            served.wait_serving(workers)
            wait_http(f"{served.url}/healthz", timeout=30)
        return served

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def established_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections to `port` each process holds (its server side)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":      # 01: ESTABLISHED
            inodes.add(fields[9])
    counts = {}
    for pid in pids:
        links = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:
                continue
        counts[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return counts


def exits_within(proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    proc.wait(timeout)
    return time.monotonic() - started


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def test_two_workers_answer_on_one_port_and_sigterm_stops_both_losing_nothing(
        serve_workers: Any, store: AccountStore, redis_url: str) -> None:
    served = serve_workers(2)
    pids = served.workers(2)
    account_id = store.create_account("Workers", "enterprise")
    api_key = store.issue_key(account_id).api_key
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    connections = [http.client.HTTPConnection("127.0.0.1", served.port, timeout=10) for _ in range(16)]
    answered = []
    for conn in connections:       # one request each, the connection kept open
        conn.request("POST", "/v1/chat/completions", BODY, headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        answered.append(response.headers["x-request-id"])
    held = established_by_pid(served.port, pids)
    assert sum(held.values()) == 16 and all(n > 0 for n in held.values()), held   # both workers serve
    # requests in flight when the stop comes finish on whichever worker took them, and are settled
    slow = [in_background(chat, served.url, api_key, {"X-Fake-Latency-Ms": "1200"}) for _ in range(6)]
    time.sleep(0.4)
    served.proc.send_signal(signal.SIGTERM)
    assert exits_within(served.proc, 30) < 15
    for thread, result in slow:
        thread.join(10)
        status, rid = result[0]
        assert status == 200
        answered.append(rid)
    for conn in connections:
        conn.close()
    assert served.proc.returncode == 0
    assert all(gone(pid) for pid in pids)
    assert not port_open(served.url)
    assert bad_lines(served.log.read_text()) == []
    rows = usage_rows(redis_url, store, account_id)
    assert {rid: (rows[rid]["calls"], rows[rid]["outcome"]) for rid in answered} == \
        dict.fromkeys(answered, ("1", "ok"))


def test_ctrl_c_stops_every_worker(serve_workers: Any) -> None:
    served = serve_workers(2)
    pids = served.workers(2)
    os.killpg(served.proc.pid, signal.SIGINT)      # a terminal's Ctrl-C: the whole foreground process group
    assert exits_within(served.proc, 30) < 15
    assert served.proc.returncode == 0
    assert all(gone(pid) for pid in pids)
    assert not port_open(served.url)


def test_a_worker_that_dies_is_replaced(serve_workers: Any, store: AccountStore) -> None:
    served = serve_workers(2)
    first, second = served.workers(2)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while "worker 1 serves again" not in served.log.read_text():
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.05)
    pids = served.workers(2)
    assert first not in pids and second in pids
    account_id = store.create_account("Replaced", "enterprise")
    api_key = store.issue_key(account_id).api_key
    for _ in range(8):
        assert chat(served.url, api_key)[0] == 200
    served.proc.send_signal(signal.SIGTERM)
    assert exits_within(served.proc, 30) < 15
    assert served.proc.returncode == 0


def test_a_worker_that_cannot_bind_fails_the_start(serve_workers: Any) -> None:
    with socket.socket() as taken:        # no SO_REUSEPORT: the workers cannot bind next to it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        served = serve_workers(2, expect_ready=False, AIHUB_PORT=str(taken.getsockname()[1]))
        assert exits_within(served.proc, 30) < 20
    assert served.proc.returncode == 1
    assert "before it served" in served.log.read_text()
    with pytest.raises(OSError):
        Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text()


def test_a_bad_upstream_url_is_one_line_before_any_worker_starts(serve_workers: Any) -> None:
    served = serve_workers(2, expect_ready=False, AIHUB_UPSTREAM_DEFAULT_URL="ftp://nowhere")
    assert exits_within(served.proc, 30) < 20
    assert served.proc.returncode == 2
    out = served.log.read_text()
    assert out.splitlines() == ["aihub: AIHUB_UPSTREAM_DEFAULT_URL: not an http(s) URL: 'ftp://nowhere'"], out


def test_each_worker_has_its_own_redis_connections(serve_workers: Any, store: AccountStore, redis_url: str) -> None:
    served = serve_workers(2)
    account_id = store.create_account("Conns", "enterprise")
    api_key = store.issue_key(account_id).api_key
    connections = [http.client.HTTPConnection("127.0.0.1", served.port, timeout=10) for _ in range(16)]
    for conn in connections:
        conn.request("POST", "/v1/chat/completions", BODY,
                     {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        by_pid: dict[int, int] = {}
        pids = served.workers(2)
        clients = client.client_list()
        ports = {int(c["addr"].rsplit(":", 1)[1]) for c in clients}
        for pid in pids:       # the client side of each worker's Redis connections
            by_pid[pid] = len(_local_ports(pid) & ports)
    finally:
        client.close()
        for conn in connections:
            conn.close()
    assert all(n >= 1 for n in by_pid.values()), by_pid


def _local_ports(pid: int) -> set[int]:
    """Local ports of the process's TCP sockets."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return {int(line.split()[1].split(":")[1], 16) for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if line.split()[9] in inodes}
