"""A stop loses nothing: Ctrl-C on `python -m gateway up`, SIGTERM on `python -m gateway serve`.

Real processes, real redis-server, real chDB; the signal is sent as a terminal sends it (Ctrl-C: SIGINT to
the whole foreground process group).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from billing_worker.clickhouse import ClickHouse
from gateway.accounts import AccountStore
from gateway.redis_server import free_port
from gateway.settings import ROOT
from tests.conftest import UPSTREAM_KEY
from tests.support import process_env, settings_for, wait_http

KEY_LINE = re.compile(r"^\s+(free|pro|enterprise)\s+(\w+)\s+(sk-ah_\S+)$")
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def chat(url: str, api_key: str, headers: dict[str, str] | None = None,
         timeout: float = 20) -> tuple[int, str]:
    """(status, x-request-id) of one chat completion; status 0 when the connection broke."""
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=BODY, method="POST", headers={
        "Authorization": f"Bearer {api_key}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, response.headers.get("x-request-id", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-request-id", "")
    except OSError:
        return 0, ""


def in_background(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, out


def bad_lines(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "CRITICAL" in line or "Traceback" in line or " ERROR " in line or line.startswith("ERROR:")]


def port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    try:
        socket.create_connection((host, int(port)), 0.5).close()
    except OSError:
        return False
    return True


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    proc.wait(timeout)
    return time.monotonic() - started


# -- make up ---------------------------------------------------------------------------------------------
def start_stack(tmp_path: Path, port: int) -> dict[str, Any]:
    """`python -m gateway up` in its own session (as a terminal runs it), on private ports and directories under
    `tmp_path` (a second start on the same `tmp_path` finds the state the first one kept)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AIHUB_UPSTREAM_DEFAULT_URL", "AIHUB_UPSTREAM_DEFAULT_KEY", "AIHUB_ENV_FILE",
                        "DATABASE_URL")}
    env.update({"AIHUB_PORT": str(port), "AIHUB_VAR_DIR": str(tmp_path / "var"),
                "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}", "AIHUB_SPOOL_DIR": str(tmp_path / "spool"),
                "AIHUB_DRAIN_INTERVAL_S": "600",     # only the stop's last drain loads the rows
                "AIHUB_FORWARD_HEADERS": "x-fake-latency-ms",
                "PYTHONPATH": str(ROOT)})
    runs = len(list(tmp_path.glob("stdout*.txt")))
    out, err = tmp_path / f"stdout{runs}.txt", tmp_path / f"stderr{runs}.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    info: dict[str, Any] = {"proc": proc, "url": f"http://127.0.0.1:{port}", "env": env, "tmp": tmp_path,
                            "stdout": out, "stderr": err}
    try:
        deadline = time.monotonic() + 60
        while "Health:" not in out.read_text():
            assert proc.poll() is None, f"make up exited: {err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "make up did not print its banner"
            time.sleep(0.05)
        wait_http(info["url"] + "/healthz")
    except BaseException:
        stop_stack(info)
        raise
    info["keys"] = {m.group(1): m.group(3) for m in map(KEY_LINE.match, out.read_text().splitlines()) if m}
    return info


def stop_stack(info: dict[str, Any], timeout: float = 40) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the process group); killed if it does not stop in time."""
    proc = info["proc"]
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    info = start_stack(tmp_path, free_port())
    try:
        yield info
    finally:
        stop_stack(info)


def test_ctrl_c_on_make_up_loads_every_answered_call_into_clickhouse(stack: dict[str, Any]) -> None:
    proc, url, tmp = stack["proc"], stack["url"], stack["tmp"]
    runtime = json.loads((tmp / "var" / "runtime.json").read_text())
    assert runtime["pid"] == proc.pid and runtime["gateway_url"] == url

    answered: list[str] = []
    for i in range(24):
        status, rid = chat(url, stack["keys"]["pro" if i % 2 else "enterprise"])
        assert status == 200
        answered.append(rid)
    # calls still in flight when Ctrl-C comes: they finish within the grace period and are billed too
    slow = [in_background(chat, url, stack["keys"]["pro"], {"X-Fake-Latency-Ms": "1200"}) for _ in range(3)]
    time.sleep(0.4)
    os.killpg(proc.pid, signal.SIGINT)          # Ctrl-C in the terminal: the whole process group
    assert wait_exit(proc, 40) < 30
    for thread, result in slow:
        thread.join(10)
        status, rid = result[0]
        assert status == 200
        answered.append(rid)

    assert proc.returncode == 0
    log = stack["stderr"].read_text()
    assert bad_lines(log) == [], log
    assert not (tmp / "var" / "runtime.json").exists()
    assert not port_open(runtime["redis_url"])         # the private Redis was stopped, after the drain
    with ClickHouse(f"chdb://{tmp / 'chdb'}") as ch:
        rows = dict(ch.query("SELECT rid, calls FROM usage_rows FINAL"))
    assert {rid: rows.get(rid) for rid in answered} == dict.fromkeys(answered, 1)


# -- gateway serve ---------------------------------------------------------------------------------------
@pytest.fixture
def serve_process(redis_url: str, upstream: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> tuple[subprocess.Popen[bytes], str, Path]:
        settings = settings_for(redis_url, upstream.url, UPSTREAM_KEY, tmp_path)
        port = free_port()
        full = {**os.environ, **process_env(settings), "AIHUB_PORT": str(port), "PYTHONPATH": str(ROOT), **env}
        full.pop("AIHUB_ENV_FILE", None)
        err = tmp_path / f"serve-{port}.stderr"
        with open(err, "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=full,
                                    stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
        started.append(proc)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        return proc, f"http://127.0.0.1:{port}", err

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def usage_rows(redis_url: str, store: AccountStore, account_id: str) -> dict[str, dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = client.xrange(store.keys(account_id).usage)
    finally:
        client.close()
    return {fields["rid"]: fields for _, fields in entries}


def test_sigterm_on_serve_finishes_and_settles_the_request_in_flight(
        serve_process: Any, store: AccountStore, redis_url: str) -> None:
    proc, url, err = serve_process()
    account_id = store.create_account("Stop", "pro")
    api_key = store.issue_key(account_id).api_key
    thread, result = in_background(chat, url, api_key, {"X-Fake-Latency-Ms": "1500"})
    time.sleep(0.4)
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 20) < 10
    thread.join(10)
    status, rid = result[0]
    assert status == 200
    assert proc.returncode == 0                    # stopped, not killed by its own signal
    assert bad_lines(err.read_text()) == []
    row = usage_rows(redis_url, store, account_id)[rid]
    assert (row["calls"], row["outcome"], row["status"]) == ("1", "ok", "200")
    assert chat(url, api_key)[0] == 0              # no longer accepting


def test_the_grace_period_bounds_a_stop_and_the_cut_request_is_settled(
        serve_process: Any, store: AccountStore, redis_url: str) -> None:
    proc, url, err = serve_process(AIHUB_SHUTDOWN_GRACE_S="0.5")
    account_id = store.create_account("Slow", "pro")
    api_key = store.issue_key(account_id).api_key
    thread, result = in_background(chat, url, api_key, {"X-Fake-Latency-Ms": "15000"})
    time.sleep(0.4)
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 20) < 6                 # not the 15 s the upstream takes
    thread.join(10)
    assert result[0][0] == 503                     # gateway_stopping, retry-after 1
    assert bad_lines(err.read_text()) == []        # no "Exception in ASGI application"
    [row] = usage_rows(redis_url, store, account_id).values()
    assert (row["calls"], row["outcome"]) == ("0", "client_cancel")      # released, not billed
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard(store.keys(account_id).reservations) == 0
    finally:
        client.close()


# -- requests the grace period cuts -------------------------------------------------------------------------
CHUNK = (b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": '
         b'"Hi"}}]}\n\n')
STREAM = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
WHOLE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class CutUpstream:
    """An upstream answering as X-Fake-Status asks: `big` (a 4 MB chat completion), `sse-stall` (an SSE stream that
    sends nothing), `sse-one` (one chunk, then nothing); otherwise it waits X-Fake-Latency-Ms (30 s)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                mode = self.headers.get("x-fake-status", "")
                if mode == "big":
                    page = json.dumps({"id": "c1", "object": "chat.completion", "pad": "x" * 4_000_000, "choices": [],
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                if mode.startswith("sse"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("content-length", "100000")
                    self.end_headers()
                    self.wfile.write(CHUNK if mode == "sse-one" else b"")
                    self.wfile.flush()
                time.sleep(int(self.headers.get("x-fake-latency-ms", "30000")) / 1000)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def slow_upstream() -> Iterator[CutUpstream]:
    upstream = CutUpstream()
    yield upstream
    upstream.server.shutdown()
    upstream.server.server_close()


def raw_request(api_key: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    head = ["POST /v1/chat/completions HTTP/1.1", "Host: gateway", f"Authorization: Bearer {api_key}",
            "Content-Type: application/json", f"Content-Length: {len(data)}",
            *[f"{k}: {v}" for k, v in headers.items()]]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def exchange(url: str, payload: bytes) -> bytes:
    """Sends `payload` on a new connection and reads until the gateway closes it."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), 30) as sock:
        sock.sendall(payload)
        out = b""
        while data := sock.recv(65536):
            out += data
        return out


def test_a_stream_cut_by_a_stop_ends_with_an_error_event(
        serve_process: Any, slow_upstream: CutUpstream, store: AccountStore, redis_url: str) -> None:
    proc, url, err = serve_process(AIHUB_SHUTDOWN_GRACE_S="0.5", AIHUB_UPSTREAM_DEFAULT_URL=slow_upstream.url)
    account_id = store.create_account("Cut streams", "pro")
    api_key = store.issue_key(account_id).api_key
    silent = in_background(exchange, url, raw_request(api_key, STREAM, {"X-Fake-Status": "sse-stall"}))
    begun = in_background(exchange, url, raw_request(api_key, STREAM, {"X-Fake-Status": "sse-one"}))
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 20) < 8
    for thread, _ in (silent, begun):
        thread.join(10)
    for (_, answer), began in ((silent, False), (begun, True)):
        head, _, body = answer[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and (b'"content":"Hi"' in body or b'"content": "Hi"' in body) == began
        assert b'"code": "gateway_stopping"' in body and body.endswith(b"0\r\n\r\n")    # a complete chunked body
    assert bad_lines(err.read_text()) == []          # no "Exception in ASGI application"
    rows = sorted((r["outcome"], r["status"], r["calls"]) for r in usage_rows(redis_url, store, account_id).values())
    assert rows == [("client_cancel", "200", "1")] * 2     # the upstream began both: billed, as a client gone


def test_a_client_that_reads_nothing_does_not_hold_up_a_stop(serve_process: Any, slow_upstream: CutUpstream,
                                                             store: AccountStore, redis_url: str) -> None:
    """A 4 MB answer the client never reads, and behind it on the same connection a slow request: the stop cuts
    the slow one, cannot write it its 503, and drops the connection instead of waiting for ever."""
    proc, url, _ = serve_process(AIHUB_SHUTDOWN_GRACE_S="0.5", AIHUB_UPSTREAM_DEFAULT_URL=slow_upstream.url)
    account_id = store.create_account("Reads nothing", "pro")
    api_key = store.issue_key(account_id).api_key
    host, port = url.split("//")[1].split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(raw_request(api_key, WHOLE, {"X-Fake-Status": "big"}) + raw_request(api_key, WHOLE, {}))
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 30) < 20
    assert proc.returncode == 0
    rows = sorted((r["outcome"], r["status"], r["calls"]) for r in usage_rows(redis_url, store, account_id).values())
    assert rows == [("client_cancel", "503", "0"), ("ok", "200", "1")]



def test_a_stream_whose_answer_never_started_is_settled_when_its_client_goes(
        serve_process: Any, slow_upstream: CutUpstream, store: AccountStore, redis_url: str) -> None:
    """Behind an unread 4 MB answer on the same connection, a stream waits to send its head; the client resets
    the connection: the relay never ran, yet the call is settled (released) at once, not left to the reaper."""
    _, url, _ = serve_process(AIHUB_UPSTREAM_DEFAULT_URL=slow_upstream.url)
    account_id = store.create_account("Never started", "pro")
    api_key = store.issue_key(account_id).api_key
    host, port = url.split("//")[1].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(raw_request(api_key, WHOLE, {"X-Fake-Status": "big"})
                 + raw_request(api_key, STREAM, {"X-Fake-Status": "sse-one"}))
    time.sleep(2.0)
    sock.close()                                   # with unread data: a reset
    deadline = time.monotonic() + 10
    while len(usage_rows(redis_url, store, account_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = sorted((r["outcome"], r["status"], r["calls"]) for r in usage_rows(redis_url, store, account_id).values())
    assert rows == [("client_cancel", "200", "0"), ("ok", "200", "1")]
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard(store.keys(account_id).reservations) == 0
    finally:
        client.close()

# -- billing worker ---------------------------------------------------------------------------------------
def test_sigterm_on_the_worker_drains_what_is_left_before_it_exits(redis_url: str, tmp_path: Path) -> None:
    from tests.billing_worker.usage_factory import make_entry, write_entries
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    env = {**os.environ, "REDIS_URL": redis_url, "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}",
           "AIHUB_DRAIN_INTERVAL_S": "600", "PYTHONPATH": str(ROOT)}
    err = tmp_path / "worker.stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "billing_worker", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "ClickHouse schema" not in err.read_text():      # migrated, Dramatiq worker started
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        entries = [make_entry(i, acct="acme") for i in range(40)]
        write_entries(client, entries)
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 30) < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client.close()
    assert proc.returncode == 0
    assert bad_lines(err.read_text()) == []
    with ClickHouse(f"chdb://{tmp_path / 'chdb'}") as ch:
        loaded = {rid for (rid,) in ch.query("SELECT rid FROM usage_rows FINAL")}
    assert loaded == {e["rid"] for e in entries}


def test_make_up_keeps_keys_counters_and_boosts_across_a_restart(tmp_path: Path) -> None:
    first = start_stack(tmp_path, free_port())
    try:
        free_key = first["keys"]["free"]
        for _ in range(3):
            assert chat(first["url"], free_key)[0] == 200
        env = {**first["env"], "REDIS_URL": json.loads((tmp_path / "var" / "runtime.json").read_text())["redis_url"]}
        boost = subprocess.run([sys.executable, "-m", "gateway", "boost", "demofree", "--calls", "7",
                                "--until", "2099-01-01", "--json"], env=env, capture_output=True, text=True)
        assert boost.returncode == 0, boost.stderr
        assert chat(first["url"], free_key)[0] == 200
        time.sleep(1.5)                        # settled, and the append-only file fsynced (every second)
    finally:
        stop_stack(first)
    assert first["proc"].returncode == 0

    second = start_stack(tmp_path, free_port())
    try:
        banner = second["stdout"].read_text()
        assert second["keys"] == {}, "demo accounts are created once; their keys are not printed again"
        assert "aihub issue-key demofree" in banner
        status = urllib.request.Request(f"{second['url']}/v1/models", headers={"Authorization": f"Bearer {free_key}"})
        with urllib.request.urlopen(status, timeout=10) as response:
            assert response.status == 200                              # the same key works
        request = urllib.request.Request(f"{second['url']}/v1/chat/completions", data=BODY, method="POST",
                                         headers={"Authorization": f"Bearer {free_key}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            # 4 calls used before the restart, this is the 5th; the limit is 100 + the boost of 7
            assert response.headers["x-quota-limit"] == "107"
            assert response.headers["x-quota-remaining"] == str(107 - 5)
    finally:
        stop_stack(second)
    assert bad_lines(second["stderr"].read_text()) == []

    # Redis lost entirely: accounts, keys and boosts come back from the database, used calls from ClickHouse
    import shutil
    shutil.rmtree(tmp_path / "var" / "redis")
    third = start_stack(tmp_path, free_port())
    try:
        request = urllib.request.Request(f"{third['url']}/v1/chat/completions", data=BODY, method="POST",
                                         headers={"Authorization": f"Bearer {free_key}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["x-quota-limit"] == "107"
            assert response.headers["x-quota-remaining"] == str(107 - 6)   # 5 drained calls + this one
    finally:
        stop_stack(third)
    assert bad_lines(third["stderr"].read_text()) == []
