"""The ASGI application: routes, error rendering, and the lifespan of clients and background loops.

The `/v1` model routes take a raw ASGI fast path (`GatewayApp.__call__` -> `v1`): no Starlette routing,
middleware, Request or Response on the requests that carry the load. Everything else (health, readiness,
metrics, and another role's `extra_routes`: webhooks, the management API, the dashboard) goes through Starlette.
Either way every answer carries `x-request-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import errors
from gateway.auth import AuthCache
from gateway.catalog import Catalog, load_catalog
from gateway.metrics import REQUESTS, LabelCache, render
from gateway.proxy import Proxy
from gateway.quota.engine import QuotaEngine
from gateway.quota.periods import Clock, system_clock
from gateway.quota.reaper import reap_expired
from gateway.quota.spool import Spool
from gateway.redis_client import async_client
from gateway.replies import error_reply, send_reply
from gateway.settings import Settings
from gateway.upstream import Upstreams

log = logging.getLogger("aihub.gateway")


def error_response(exc: errors.GatewayError) -> Response:
    return Response(exc.body(), status_code=exc.status, headers=exc.headers, media_type="application/json")


def request_id() -> str:
    return "req_" + os.urandom(16).hex()


class GatewayApp(Starlette):
    """Starlette, except that HTTP requests under `/v1/` go straight to `v1` (a raw ASGI app)."""

    def __init__(self, v1: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.v1 = v1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.v1(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class RequestIdMiddleware:
    """Gives every HTTP request an id (`scope["aihub.rid"]`, the quota reservation's id) and every response,
    errors included, an `x-request-id` header carrying it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        scope["aihub.rid"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _every(seconds: float, job: Any, name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except (RedisError, OSError) as exc:
            log.debug("%s: Redis not reachable yet (%s)", name, exc)
        except Exception:
            log.exception("%s failed", name)


def create_app(settings: Settings | None = None, catalog: Catalog | None = None,
               clock: Clock = system_clock, run_reaper: bool = True,
               extra_routes: Sequence[BaseRoute] = ()) -> GatewayApp:
    """The proxy app; `extra_routes` adds another role's routes on the same port (`make up` mounts the API
    role's webhooks: the proxy's own modules never import them)."""
    settings = settings or Settings.from_env()
    catalog = catalog or load_catalog(settings.catalog_path)
    upstreams = Upstreams(settings, catalog.upstreams)
    client = async_client(settings)
    engine = QuotaEngine(settings, catalog, client, Spool(settings.spool_dir), clock)
    proxy = Proxy(settings, catalog, engine, upstreams, AuthCache(client, settings.shards))

    requests = LabelCache(REQUESTS)

    async def v1(scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id()
        scope["aihub.rid"] = rid
        try:
            reply = await proxy.handle(scope, receive, rid)
        except errors.GatewayError as exc:
            reply = error_reply(exc)
        except asyncio.CancelledError:     # the server stopping after its grace period (nothing else cancels it)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            reply = error_reply(errors.ServiceUnavailable(
                f"The gateway is stopping; request {rid} was not completed and is not billed. Retry it.",
                code="gateway_stopping", headers={"retry-after": "1"}))
        except Exception:
            log.exception("unhandled error on %s (%s)", scope["path"], rid)
            reply = error_reply(errors.GatewayError(f"The gateway hit an internal error; it was logged under "
                                                    f"request {rid}."))
        reply.headers.append((b"x-request-id", rid.encode()))
        requests.get(scope.get("aihub.route", "unknown"), reply.status, scope.get("aihub.model", "")).inc()
        try:
            await send_reply(reply, receive, send)
        except asyncio.CancelledError:     # the server stopping while the answer waits on a slow reader: dropped
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(client.ping(), settings.redis_timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "redis": "ok", "spooled": engine.spool.pending})

    async def metrics(request: Request) -> Response:
        return Response(render(), media_type="text/plain; version=0.0.4")

    async def server_error(request: Request, exc: Exception) -> Response:
        rid = request.scope.get("aihub.rid", "")
        log.exception("unhandled error on %s (%s)", request.url.path, rid, exc_info=exc)
        return error_response(errors.GatewayError(f"The gateway hit an internal error; it was logged under "
                                                  f"request {rid}.", headers={"x-request-id": rid}))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(errors.NotFound(f"Unknown path {request.url.path}.", code="unknown_url"))

    async def bad_method(request: Request, exc: Exception) -> Response:
        allow = (exc.headers or {}).get("Allow", "") if isinstance(exc, HTTPException) else ""
        return error_response(errors.MethodNotAllowed(f"Method {request.method} is not allowed on "
                                                      f"{request.url.path}; use {allow}.", headers={"allow": allow}))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.redis_cluster:
            await client.initialize()   # slot map first: concurrent first calls race in redis-py
        loops = [asyncio.create_task(_every(1.0, engine.replay_spool, "spool replay"))]
        if run_reaper and settings.quota_checks:
            loops.append(asyncio.create_task(_every(30.0, lambda: reap_expired(engine), "reaper")))
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await engine.close()
            engine.spool.close()
            await upstreams.close()
            await client.aclose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *extra_routes,
    ]
    app = GatewayApp(v1, routes=routes, lifespan=lifespan, middleware=[Middleware(RequestIdMiddleware)],
                     exception_handlers={Exception: server_error, 404: not_found, 405: bad_method})
    app.router.redirect_slashes = False   # `/v1/` and `/healthz/` are not paths of ours: 404, not a redirect
    app.state.engine = engine
    app.state.settings = settings
    app.state.catalog = catalog
    return app
