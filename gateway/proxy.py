"""The proxy endpoints: model calls (admit, forward, relay, settle) and the /v1 pass-through."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import errors
from gateway.auth import AuthCache, presented_key
from gateway.body import json_object, model_name, read_body
from gateway.catalog import Catalog, Model
from gateway.headers import request_headers, response_headers
from gateway.keys import ParsedKey
from gateway.metrics import UPSTREAM_LATENCY
from gateway.quota.admission import Admission, Usage
from gateway.quota.engine import QuotaEngine
from gateway.relay import body_usage, elapsed_ms, json_error_message, relay_sse
from gateway.settings import Settings
from gateway.upstream import Upstreams
from gateway.usage import TokenCounts

STREAMABLE = ("/v1/chat/completions", "/v1/completions")


class Proxy:
    def __init__(self, settings: Settings, catalog: Catalog, engine: QuotaEngine, upstreams: Upstreams,
                 auth_cache: AuthCache) -> None:
        self.settings = settings
        self.catalog = catalog
        self.engine = engine
        self.upstreams = upstreams
        self.auth_cache = auth_cache

    # -- admission ----------------------------------------------------------------------------------
    async def admit(self, key: ParsedKey, model: Model | None, billable: bool) -> Admission:
        rid = "req_" + os.urandom(16).hex()
        if self.settings.quota_checks:
            return await self.engine.admit(key, model, rid, billable)
        plan = await self.auth_cache.plan_of(key)
        now = time.time()
        return Admission(rid=rid, key=key, keys=self.engine.account_keys(key.account_id),
                         period=self.engine.periods.at(now), ts_start_ms=int(now * 1000), billable=False,
                         model=model.name if model else "", upstream=model.upstream if model else "",
                         plan=plan)

    def settle(self, admission: Admission, usage: Usage) -> None:
        if self.settings.quota_checks and admission.billable:
            self.engine.settle_soon(admission, usage)

    def model_named(self, name: str) -> Model:
        model = self.catalog.models.get(name)
        if model is None:
            raise errors.NotFound(f"The model `{name}` does not exist or you do not have access to it.",
                                  code="model_not_found", param="model")
        return model

    def plan_allows(self, plan: str, model: Model) -> bool:
        found = self.catalog.plans.get(plan)
        return found is not None and model.tier in found.model_tiers

    # -- endpoints ----------------------------------------------------------------------------------
    async def model_call(self, request: Request) -> Response:
        key = presented_key(request.headers)
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            payload = json_object(body)
            name = model_name(payload)
            model = self.model_named(name)
        except errors.GatewayError:
            await self.auth_cache.plan_of(key)   # a bad key is told 401 before anything about its body
            raise
        strip_usage = False
        streaming = payload.get("stream") is True and request.url.path in STREAMABLE
        if streaming:
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                payload["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                             "include_usage": True}
                body = orjson.dumps(payload)
                strip_usage = True
        admission = await self.admit(key, model, billable=True)
        request.scope["aihub.model"] = name   # for the requests metric
        return await self.forward(request, admission, model.upstream, body, streaming, strip_usage, model)

    async def passthrough(self, request: Request) -> Response:
        """Other /v1/* paths go to the default upstream; a body that names a known model is billed."""
        key = presented_key(request.headers)
        model: Model | None = None
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            if body and request.headers.get("content-type", "").startswith("application/json"):
                try:
                    named = orjson.loads(body)
                except orjson.JSONDecodeError:
                    named = None
                if isinstance(named, dict) and isinstance(named.get("model"), str):
                    model = self.model_named(named["model"])
        except errors.GatewayError:
            await self.auth_cache.plan_of(key)   # a bad key is told 401 before anything about its body
            raise
        admission = await self.admit(key, model, billable=model is not None)
        upstream = model.upstream if model else self.upstreams.default
        return await self.forward(request, admission, upstream, body, False, False, model)

    async def list_models(self, request: Request) -> Response:
        key = presented_key(request.headers)
        admission = await self.admit(key, None, billable=False)
        created = 1_700_000_000
        data = [{"id": m.name, "object": "model", "created": created, "owned_by": m.upstream}
                for m in self.catalog.models.values() if self.plan_allows(admission.plan, m)]
        wanted = request.path_params.get("model")
        if wanted is not None:
            match = [m for m in data if m["id"] == wanted]
            if not match:
                raise errors.NotFound(f"The model `{wanted}` does not exist or you do not have access to it.",
                                      code="model_not_found")
            return Response(orjson.dumps(match[0]), media_type="application/json",
                            headers=admission.headers())
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json",
                        headers=admission.headers())

    # -- forwarding ---------------------------------------------------------------------------------
    async def forward(self, request: Request, admission: Admission, upstream: str, body: bytes,
                      streaming: bool, strip_usage: bool, model: Model | None) -> Response:
        headers = request_headers(request.scope["headers"], self.upstreams.keys.get(upstream), admission.rid)
        started = time.perf_counter()
        try:
            response = await self.upstreams.request(upstream, request.method, request.url.path,
                                                    request.url.query, headers, body)
        except asyncio.CancelledError:
            self.settle(admission, Usage(False, "client_cancel", 0, latency_ms=elapsed_ms(started)))
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            self.settle(admission, Usage(False, "upstream_error", 504, latency_ms=elapsed_ms(started)))
            raise errors.UpstreamTimeout(f"The upstream `{upstream}` did not answer in time.") from None
        except aiohttp.ClientError as exc:
            self.settle(admission, Usage(False, "upstream_error", 502, latency_ms=elapsed_ms(started)))
            raise errors.UpstreamError(f"The upstream `{upstream}` could not be reached: "
                                       f"{type(exc).__name__}.") from None
        latency = elapsed_ms(started)
        UPSTREAM_LATENCY.labels(upstream).observe(latency / 1000)
        out_headers = response_headers(response.headers.items()) | admission.headers()
        out_headers["x-request-id"] = admission.rid
        status = response.status

        def finish(outcome: str, tokens: TokenCounts | None) -> None:
            self.settle(admission, self.usage_of(status, outcome, tokens, model, latency))

        if status >= 500 or status in (401, 403):
            try:
                raw = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                raw = b""
            finally:
                response.close()
            finish("upstream_error", None)
            detail = json_error_message(raw) or raw[:200].decode("utf-8", "replace")
            raise errors.UpstreamError(f"The upstream `{upstream}` failed with HTTP {status}: {detail}",
                                       headers={"x-request-id": admission.rid})
        if streaming and status == 200 and "text/event-stream" in response.headers.get("content-type", ""):
            return StreamingResponse(relay_sse(response, strip_usage, finish), status_code=status,
                                     headers=out_headers, media_type="text/event-stream")
        if not streaming and model is None:
            return StreamingResponse(self._raw(response, finish), status_code=status, headers=out_headers)
        try:
            raw = await response.read()
        except asyncio.CancelledError:
            response.close()
            finish("client_cancel", None)
            raise
        except (TimeoutError, aiohttp.ClientError):
            response.close()
            finish("upstream_error", None)
            raise errors.UpstreamError(f"The upstream `{upstream}` broke off its answer.") from None
        response.release()
        finish("ok" if status < 400 else "upstream_error", body_usage(raw) if status < 400 else None)
        return Response(raw, status_code=status, headers=out_headers)

    @staticmethod
    async def _raw(response: aiohttp.ClientResponse, finish: Any) -> Any:
        outcome = "client_cancel"
        try:
            async for chunk in response.content.iter_any():
                yield chunk
            outcome = "ok"
        except (TimeoutError, aiohttp.ClientError):
            outcome = "upstream_error"
        finally:
            response.close()
            finish(outcome, None)

    def usage_of(self, status: int, outcome: str, tokens: TokenCounts | None, model: Model | None,
                 latency_ms: int) -> Usage:
        """Billing policy: a call is billed when the upstream answered 2xx and began serving it, even if
        the client went away or the stream broke off later; tokens are those the upstream reported.
        Upstream errors (4xx, 5xx, timeouts, refused connections) are released, not billed."""
        billable = 200 <= status < 300
        counts = tokens or TokenCounts()
        cost = model.cost_nanos(counts.prompt, counts.completion) if (model and billable) else 0
        return Usage(billable=billable, outcome=outcome, status=status, prompt_tokens=counts.prompt,
                     completion_tokens=counts.completion, cached_tokens=counts.cached,
                     reasoning_tokens=counts.reasoning, cost_nanos=cost, latency_ms=latency_ms)
