"""The `/v1` endpoints: look the request up in the allow-list, admit, forward, relay, settle.

Per request: the plain path (gateway.paths) and the endpoint (gateway.endpoints) first, then the key, then
the body is parsed as the endpoint's type says (JSON whatever the Content-Type; a multipart form), its fields
checked, the model and the calls asked for read; admit.lua decides; the upstream receives exactly the path
and the body that were checked, re-encoded by the gateway (orjson: about 0.2 us for a chat body, and what the
upstream parses is what was checked: no duplicate keys, no numbers read two ways); settle counts what was
admitted. Works on the raw ASGI scope and returns a gateway.replies.Reply: no Request or Response objects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
from starlette.types import Receive

from gateway import errors
from gateway.auth import AuthCache, presented_key
from gateway.body import json_object, model_name, read_body
from gateway.catalog import Catalog, Model
from gateway.endpoints import Endpoint, check_fields, lookup, requested_max_tokens
from gateway.forms import parse_form
from gateway.headers import (
    FORWARDED,
    JSON_TYPE,
    NEVER_FORWARDED,
    ClientHeaders,
    encoded,
    read_headers,
    request_headers,
    response_headers,
)
from gateway.keys import ParsedKey
from gateway.metrics import UPSTREAM_LATENCY, LabelCache
from gateway.paths import plain_path
from gateway.quota.admission import Admission, Usage
from gateway.quota.engine import QuotaEngine
from gateway.relay import Finish, body_usage, elapsed_ms, relay_sse
from gateway.replies import Reply
from gateway.settings import Settings
from gateway.upstream import UpstreamResponse, Upstreams, form_body
from gateway.usage import TokenCounts

log = logging.getLogger("aihub.proxy")
JSON = b"application/json"
HIDDEN_STATUSES = frozenset({401, 403, 407, 429})   # with 3xx, 5xx: the upstream's text is logged, never relayed
MAX_KEYS_CACHED = 10_000
MAX_PATHS_CACHED = 1_000


class Proxy:
    def __init__(self, settings: Settings, catalog: Catalog, engine: QuotaEngine, upstreams: Upstreams,
                 auth_cache: AuthCache) -> None:
        self.settings = settings
        self.catalog = catalog
        self.engine = engine
        self.upstreams = upstreams
        self.auth_cache = auth_cache
        self.forwarded = encoded(FORWARDED | (settings.forward_headers - NEVER_FORWARDED))
        self.latency = LabelCache(UPSTREAM_LATENCY)
        self._keys: dict[bytes, ParsedKey] = {}   # Authorization value -> parsed key (a pure function of it)
        self._paths: dict[bytes, str] = {}        # raw path -> plain path, for paths that are plain

    # -- admission ----------------------------------------------------------------------------------
    async def admit(self, key: ParsedKey, rid: str, model: Model | None, billable: bool, calls: int = 1,
                    max_tokens: int = 0) -> Admission:
        if self.settings.quota_checks:
            return await self.engine.admit(key, model, rid, billable, calls, max_tokens)
        plan = await self.auth_cache.plan_of(key)
        now = time.time()
        return Admission(rid=rid, key=key, keys=self.engine.account_keys(key.account_id),
                         period=self.engine.periods.at(now), ts_start_ms=int(now * 1000), billable=False,
                         model=model.name if model else "", upstream=model.upstream if model else "",
                         plan=plan, calls=0)

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

    def plain_path(self, scope: MutableMapping[str, Any]) -> str:
        """gateway.paths.plain_path, remembered for the raw paths that passed it (a few per deployment)."""
        raw_path = scope.get("raw_path")
        path = self._paths.get(raw_path) if isinstance(raw_path, bytes) else None
        if path is None:
            path = plain_path(scope)
            if isinstance(raw_path, bytes):
                if len(self._paths) >= MAX_PATHS_CACHED:
                    self._paths.clear()
                self._paths[raw_path] = path
        return path

    def presented_key(self, authorization: bytes | None) -> ParsedKey:
        """The key of an Authorization value (401 when missing or malformed); parsed and hashed once per value."""
        value = authorization or b""
        key = self._keys.get(value)
        if key is None:
            key = presented_key({"authorization": value.decode("latin-1")})
            if len(self._keys) >= MAX_KEYS_CACHED:
                self._keys.clear()
            self._keys[value] = key
        return key

    # -- the /v1 dispatcher -------------------------------------------------------------------------
    async def handle(self, scope: MutableMapping[str, Any], receive: Receive, rid: str) -> Reply:
        method: str = scope["method"]
        client = read_headers(scope["headers"], self.forwarded)
        try:
            endpoint, param = lookup(method, self.plain_path(scope))
        except errors.PermissionDenied:          # a refused family: a bad key is told 401 first
            await self.auth_cache.plan_of(self.presented_key(client.authorization))
            raise
        scope["aihub.route"] = endpoint.path
        key = self.presented_key(client.authorization)
        if endpoint.kind == "local":
            return await self.models(key, rid, param or None)
        billed = endpoint.kind == "billed"
        try:
            if scope.get("query_string"):
                raise errors.InvalidRequest(f"{endpoint.path} takes no query parameters.", code="unknown_parameter")
            body = await read_body(receive, client.content_length, self.settings.max_body_bytes)
            form = None
            if endpoint.body == "multipart":
                form = await parse_form(scope, body, endpoint.repeated)
                payload: dict[str, Any] = form.fields
            else:
                payload = json_object(body)
            check_fields(endpoint, payload)       # field names are allow-listed before anything re-encodes them
            encoded_form = form.encoded() if form is not None else None   # before admit: may refuse the form
            if endpoint.kind == "free" and "model" in payload and payload["model"] not in endpoint.models:
                raise errors.InvalidRequest(f"'model' must be one of {', '.join(sorted(endpoint.models))} here.",
                                            param="model", code="invalid_value")
            model = self.model_named(model_name(payload)) if billed else None
            calls = endpoint.calls(payload) if billed else 0
            max_tokens = requested_max_tokens(endpoint, payload)
        except errors.GatewayError:
            await self.auth_cache.plan_of(key)   # a bad key is told 401 before anything about its body
            raise
        streaming = bool(endpoint.stream) and payload.get("stream") is True
        strip_usage = False
        if streaming and endpoint.stream == "chat":
            options = payload.get("stream_options")
            if not isinstance(options, dict) or options.get("include_usage") is not True:
                payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                strip_usage = True
        admission = await self.admit(key, rid, model, billed, calls, max_tokens)
        if model is not None:
            scope["aihub.model"] = model.name   # for the requests metric
        if encoded_form is not None:
            form_bytes, form_type = await form_body(encoded_form)
            return await self.forward(method, endpoint, client, admission, form_bytes, form_type, False, False, model)
        self._cap_output_tokens(endpoint, payload, admission, max_tokens)
        if endpoint.stream == "responses":
            payload["store"] = False     # nothing stored upstream that another account could reference by id
        return await self.forward(method, endpoint, client, admission, orjson.dumps(payload), JSON, streaming,
                                  strip_usage, model)

    def _cap_output_tokens(self, endpoint: Endpoint, payload: dict[str, Any], admission: Admission,
                           asked: int) -> None:
        """A plan with an output-token cap: a request that gives no limit gets the cap (admit refused above it)."""
        plan = self.catalog.plans.get(admission.plan)
        if asked == 0 and endpoint.token_limits and plan is not None and plan.max_output_tokens:
            payload[endpoint.token_limits[0]] = plan.max_output_tokens

    async def models(self, key: ParsedKey, rid: str, wanted: str | None) -> Reply:
        """GET /v1/models (the plan's models) and /v1/models/{model} (403 outside the plan, as model routes)."""
        admission = await self.admit(key, rid, None, billable=False)
        if wanted is not None:
            model = self.model_named(wanted)
            if not self.plan_allows(admission.plan, model):
                raise errors.PermissionDenied(f"The model `{wanted}` is not available on the {admission.plan} plan.",
                                              param="model")
            return Reply(200, [JSON_TYPE, *admission.header_pairs()], orjson.dumps(self._model_object(model)))
        data = [self._model_object(m) for m in self.catalog.models.values() if self.plan_allows(admission.plan, m)]
        return Reply(200, [JSON_TYPE, *admission.header_pairs()], orjson.dumps({"object": "list", "data": data}))

    @staticmethod
    def _model_object(model: Model) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": 1_700_000_000, "owned_by": model.upstream}

    # -- forwarding ---------------------------------------------------------------------------------
    async def forward(self, method: str, endpoint: Endpoint, client: ClientHeaders, admission: Admission,
                      body: bytes, content_type: bytes, streaming: bool, strip_usage: bool,
                      model: Model | None) -> Reply:
        upstream = model.upstream if model else self.upstreams.default
        headers = request_headers(client, self.upstreams.auth[upstream], admission.rid.encode(), content_type)
        started = time.perf_counter()
        try:
            response = await self.upstreams.request(upstream, method.encode(), endpoint.path.encode(), headers, body)
        except asyncio.CancelledError:     # the server stopping: the client is answered 503 (gateway.app)
            self.settle(admission, Usage(False, "client_cancel", 503, latency_ms=elapsed_ms(started)))
            raise
        except TimeoutError:
            self.settle(admission, Usage(False, "upstream_error", 504, latency_ms=elapsed_ms(started)))
            raise errors.UpstreamTimeout(f"The upstream did not answer in time (request {admission.rid}).",
                                         headers=admission.headers(released=True)) from None
        except OSError as exc:           # refused, reset, closed early, malformed answer, TLS
            self.settle(admission, Usage(False, "upstream_error", 502, latency_ms=elapsed_ms(started)))
            log.warning("upstream %s unreachable for %s: %r", upstream, admission.rid, exc)
            raise errors.UpstreamError(f"The upstream could not be reached (request {admission.rid}).",
                                       headers=admission.headers(released=True)) from None
        latency = elapsed_ms(started)
        self.latency.get(upstream).observe(latency / 1000)
        status = response.status
        settles = self.settings.quota_checks and admission.billable   # else there is no usage to read

        def finish(outcome: str, tokens: TokenCounts | None, served: bool) -> None:
            """Settles the answer; `served=False`: nothing of it reached the client (released, not billed)."""
            if settles:
                usage = (self.usage_of(admission, status, outcome, tokens, model, latency) if served
                         else Usage(False, outcome, status, latency_ms=latency))
                self.engine.settle_soon(admission, usage)

        if status >= 500 or status in HIDDEN_STATUSES or 300 <= status < 400:   # redirects are not followed
            await self._hidden_failure(response, upstream, admission, finish)
        out_headers = response_headers(response.headers)
        out_headers += admission.header_pairs(released=status >= 400)
        if streaming and status == 200 and b"text/event-stream" in (response.header(b"content-type") or b""):
            def abandon() -> None:
                response.close()
                finish("client_cancel", None, False)
            return Reply(status, out_headers, stream=relay_sse(response, strip_usage, finish), abandon=abandon)
        # A whole answer reaches the client only once read: if reading it fails, the client gets none of it and
        # the call is released (the row carries the status the client got), whatever the upstream's status was.
        try:
            data = await response.read()
        except asyncio.CancelledError:        # the server stopping (grace period over): answered 503
            response.close()
            self.settle(admission, Usage(False, "client_cancel", 503, latency_ms=latency))
            raise
        except TimeoutError:
            response.close()
            self.settle(admission, Usage(False, "upstream_error", 504, latency_ms=latency))
            log.warning("upstream %s stalled in its HTTP %d answer to %s", upstream, status, admission.rid)
            raise errors.UpstreamTimeout(f"The upstream stopped sending its answer in time (request "
                                         f"{admission.rid}).", headers=admission.headers(released=True)) from None
        except OSError as exc:
            response.close()
            self.settle(admission, Usage(False, "upstream_error", 502, latency_ms=latency))
            log.warning("upstream %s broke off its HTTP %d answer to %s: %r", upstream, status, admission.rid, exc)
            raise errors.UpstreamError(f"The upstream broke off its answer (request {admission.rid}).",
                                       headers=admission.headers(released=True)) from None
        finish("ok" if status < 400 else "upstream_error", body_usage(data) if settles and status < 400 else None,
               True)
        if status >= 400:
            return self._client_error(status, out_headers, data, upstream, admission)
        return Reply(status, out_headers, data)

    def _client_error(self, status: int, out_headers: list[tuple[bytes, bytes]], data: bytes, upstream: str,
                      admission: Admission) -> Reply:
        """An upstream 4xx (not 401/403/407/429): a JSON object (the model API's error about the request) is
        relayed with the operator's upstream key blanked out should it appear; anything else (a front server's
        text or HTML page) is not relayed: the client gets the status with a fixed error in the API's format, and
        the text goes to the log."""
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            key = self.upstreams.keys.get(upstream)
            if key:
                decoded = orjson.dumps(parsed)        # the key may be spelt with JSON escapes in `data`
                if key.encode() in decoded:
                    data = decoded.replace(key.encode(), b"[redacted]")
            return Reply(status, out_headers, data)
        log.warning("upstream %s answered HTTP %d to %s with a body that is not a JSON object: %s", upstream, status,
                    admission.rid, data[:500].decode("utf-8", "replace"))
        error = errors.InvalidRequest(f"The upstream refused the request with HTTP {status}; the details were "
                                      f"logged under request {admission.rid}.", code="upstream_refused")
        return Reply(status, [JSON_TYPE, *admission.header_pairs(released=True)], error.body())

    async def _hidden_failure(self, response: UpstreamResponse, upstream: str, admission: Admission,
                              finish: Finish) -> None:
        """An upstream 3xx/401/403/407/429/5xx: its text may name the operator's key or organization (and a redirect
        is not followed), so the client gets a fixed message with the request id and the text goes to the log."""
        try:
            data = await response.read()
        except OSError:
            data = b""
        finally:                          # also when cancelled (the server stopping): released either way
            response.close()
            finish("upstream_error", None, False)
        status = response.status
        log.warning("upstream %s answered HTTP %d to %s: %s", upstream, status, admission.rid,
                    data[:500].decode("utf-8", "replace"))
        if status == 429:
            retry = (response.header(b"retry-after") or b"1").decode("latin-1")
            quota = {name: value for name, value in admission.headers(released=True).items()
                     if name.startswith("x-quota-")}       # x-ratelimit-* are the gateway's bucket, not this 429
            raise errors.RateLimited(f"The model provider is rate limiting this gateway; retry shortly (request "
                                     f"{admission.rid}).", code="upstream_rate_limited",
                                     headers={"retry-after": retry if retry.isdigit() else "1", **quota})
        raise errors.UpstreamError(f"The upstream failed with HTTP {status}; the details were logged under request "
                                   f"{admission.rid}.", headers=admission.headers(released=True))

    @staticmethod
    def usage_of(admission: Admission, status: int, outcome: str, tokens: TokenCounts | None, model: Model | None,
                 latency_ms: int) -> Usage:
        """Billing policy: a call is billed when the upstream answered 2xx and began serving it, even if
        the client went away or the stream broke off later; tokens are those the upstream reported.
        Upstream errors (4xx, 5xx, timeouts, refused connections) are released, not billed, and so is an answer
        nothing of which reached the client: a whole body that broke off or stalled (502, 504), a stream that broke
        off before its first event (`forward` settles those without this function)."""
        billable = 200 <= status < 300
        counts = tokens or TokenCounts()
        cost = model.cost_nanos(counts.prompt, counts.completion, admission.calls) if (model and billable) else 0
        return Usage(billable=billable, outcome=outcome, status=status, prompt_tokens=counts.prompt,
                     completion_tokens=counts.completion, cached_tokens=counts.cached,
                     reasoning_tokens=counts.reasoning, cost_nanos=cost, latency_ms=latency_ms)
