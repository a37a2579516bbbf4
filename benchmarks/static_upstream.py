"""A static upstream for the hot-path benchmarks: nginx answering `POST /v1/chat/completions` with a fixed chat
completion (`return 200`), so the upstream costs next to nothing and the gateway's own cost shows; and nginx
`proxy_pass` to it, the reference a proxy is compared with.

nginx runs as any user: every path is under the work directory. `static_sse` is the same upstream answering with
a fixed stream of `chat.completion.chunk` events (usage last, then `[DONE]`), all in one write.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson

from benchmarks.support import MODEL, Service, stop, wait_http
from gateway.redis_server import free_port

USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
         "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
COMPLETION = orjson.dumps({
    "id": "chatcmpl-static", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, nice to meet you.",
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": USAGE, "service_tier": "default", "system_fingerprint": "fp_static"})


def sse_body(events: int) -> bytes:
    """`events` content chunks, a finish chunk, a usage chunk (empty choices) and `[DONE]`."""
    base = {"id": "chatcmpl-static", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": MODEL}
    frames = [orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]})
              for i in range(events)]
    frames.append(orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    frames.append(orjson.dumps({**base, "choices": [], "usage": USAGE}))
    return b"".join(b"data: " + f + b"\n\n" for f in frames) + b"data: [DONE]\n\n"


CONF = """\
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
{body}
}}
"""
STATIC_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 'ok'; }}
        location = /v1/chat/completions {{
            default_type {content_type};
            return 200 '{content}';
        }}
    }}
"""
PROXY_SERVER = """\
    upstream static {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://static;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is not None:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


@contextlib.contextmanager
def _nginx(workdir: Path, name: str, server: str, health: str) -> Iterator[Service]:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    directory = workdir / name
    directory.mkdir()
    directory.chmod(0o755)   # when run as root the worker runs as nobody
    conf = directory / "nginx.conf"
    conf.write_text(CONF.format(d=directory, body=server))
    proc = subprocess.Popen([binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = server.split("listen 127.0.0.1:")[-1].split(";")[0]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + health, proc)
        yield Service(url, proc.pid)
    finally:
        stop(proc, signal.SIGTERM)


def _quoted(body: bytes) -> str:
    text = body.decode()
    if "'" in text or "$" in text or "\\" in text:
        raise ValueError("a static body for nginx may not hold quotes, backslashes or '$'")
    return text


@contextlib.contextmanager
def static_upstream(workdir: Path, name: str = "static", body: bytes = COMPLETION,
                    content_type: str = "application/json") -> Iterator[Service]:
    """nginx answering POST /v1/chat/completions with `body` (and /healthz)."""
    server = STATIC_SERVER.format(port=free_port(), content_type=content_type, content=_quoted(body))
    with _nginx(workdir, name, server, "/healthz") as service:
        yield service


@contextlib.contextmanager
def static_sse(workdir: Path, events: int, name: str = "sse") -> Iterator[Service]:
    with static_upstream(workdir, name, sse_body(events), "text/event-stream") as service:
        yield service


@contextlib.contextmanager
def nginx_proxy(workdir: Path, upstream_url: str, name: str = "proxy") -> Iterator[Service]:
    """nginx proxy_pass (keep-alive pool of 64) to `upstream_url`."""
    server = PROXY_SERVER.format(port=free_port(), upstream=upstream_url.removeprefix("http://"))
    with _nginx(workdir, name, server, "/healthz") as service:
        yield service
