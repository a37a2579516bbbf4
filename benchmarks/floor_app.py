"""The floor of the gateway's server and client: the same HTTP server and upstream client with no gateway logic.

`python -m benchmarks.floor_app` serves, on AIHUB_HOST:AIHUB_PORT, an ASGI app that reads each request's body
and sends it as is to AIHUB_UPSTREAM_DEFAULT_URL + the request's path with `gateway.upstream.Upstreams` (the
gateway's pyreqwest client, same settings), then answers with the upstream's status, content-type and body:
no key, no allow-list, no JSON parsing, no quota, no metrics, no request id. It runs under uvicorn with
`gateway.server.uvicorn_config` (uvloop, httptools), as `aihub serve` does.

With AIHUB_FLOOR_UPSTREAM=0 it calls no upstream and answers every request with the static upstream's fixed chat
completion: the server alone (uvicorn, ASGI, reading the body, writing the answer), which tells the server's share
of the floor from the client's.

Whatever this costs per request, the gateway costs more: `test_bench_hotpath.py` measures it beside nginx
`proxy_pass` so that the "checks on >= 15% of nginx" target can be read against what this server and client
allow on the machine measured.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from benchmarks.static_upstream import COMPLETION
from gateway.replies import Reply, send_reply
from gateway.settings import Settings
from gateway.upstream import Upstreams

CONTENT_TYPE = b"content-type"


def create_app(settings: Settings, call_upstream: bool = True) -> Any:
    upstreams = Upstreams(settings, ("default",))
    auth = upstreams.auth["default"]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await upstreams.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if not call_upstream:
            await send_reply(Reply(200, [(CONTENT_TYPE, b"application/json")], COMPLETION), receive, send)
            return
        headers = [(b"content-type", b"application/json"), *([auth] if auth else [])]
        response = await upstreams.request("default", scope["method"].encode(), scope["raw_path"], headers, body)
        data = await response.read()
        content_type = response.header(CONTENT_TYPE) or b"application/json"
        await send_reply(Reply(response.status, [(CONTENT_TYPE, content_type)], data), receive, send)

    return app


def main() -> None:
    from gateway.server import uvicorn_config

    settings = Settings.from_env(dict(os.environ))
    app = create_app(settings, call_upstream=os.environ.get("AIHUB_FLOOR_UPSTREAM", "1") != "0")
    uvicorn.Server(uvicorn_config(app, settings)).run()   # type: ignore[arg-type]


if __name__ == "__main__":
    main()
