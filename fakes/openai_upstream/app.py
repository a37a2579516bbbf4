"""The aiohttp application: routing, auth, behaviour headers, request recording, endpoints."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict

import orjson
from aiohttp import web

from fakes.openai_upstream import payloads as p
from fakes.openai_upstream.control import BadControlHeader, Behaviour, error_response, parse_behaviour
from fakes.openai_upstream.streaming import Stats, chat_stream_plan, send_stream, text_stream_plan

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small")
MAX_RECORDED = 200
MODELS_CREATED = 1_700_000_000


class RecordedRequest(TypedDict):
    method: str
    path: str
    headers: dict[str, str]
    body: Any


_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)

Endpoint = Callable[[web.Request, Any, Behaviour], Awaitable[web.StreamResponse]]


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=p.dumps(obj), content_type="application/json")


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _object_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise p.BadRequest("We could not parse the JSON body of your request: expected a JSON object.")
    return body


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class UpstreamApp:
    """All state of one fake upstream; `build()` returns a fresh aiohttp Application over it."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        latency_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.stats = Stats()
        self.recorded: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self._expected_auth = f"Bearer {api_key}" if api_key else None
        self._models_body = p.dumps(p.models_list(self.models, MODELS_CREATED))
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._inflight: set[asyncio.Task[Any]] = set()
        self._endpoints: dict[tuple[str, str], Endpoint] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
        }

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_fake/requests", self._fake_requests)
        app.router.add_post("/_fake/reset", self._fake_reset)
        app.router.add_get("/_fake/stats", self._fake_stats)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_shutdown.append(self._on_shutdown)
        return app

    def reset(self) -> None:
        self.recorded.clear()
        self.stats.reset()

    async def _on_shutdown(self, _app: web.Application) -> None:
        for task in list(self._inflight):  # no graceful drain: hung and slow streams would delay stop()
            task.cancel()

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{self._id_prefix}{next(self._ids):012d}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - aiohttp always runs handlers in a task
            return await self._handle(request)
        self._inflight.add(task)
        try:
            return await self._handle(request)
        finally:
            self._inflight.discard(task)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = _parse_body(await request.read())
        headers = request.headers
        self.stats.requests += 1
        self.recorded.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": {k.lower(): v for k, v in headers.items()},
                "body": body,
            }
        )
        if self._expected_auth is not None and headers.get("Authorization") != self._expected_auth:
            message = _MISSING_KEY if "Authorization" not in headers else "Incorrect API key provided."
            return error_response(401, message, code="invalid_api_key")
        try:
            behaviour = parse_behaviour(headers)
        except BadControlHeader as exc:
            return error_response(400, str(exc), code="fake_bad_control_header")
        if behaviour.hang:
            await asyncio.get_running_loop().create_future()  # until the client leaves or we shut down
        latency_ms = self.latency_ms if behaviour.latency_ms is None else behaviour.latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)
        if behaviour.status is not None:
            return error_response(behaviour.status)
        endpoint = self._endpoints.get((request.method, request.path))
        if endpoint is None:
            if request.path.startswith("/v1/"):
                return json_response({"object": "echo", "path": request.path, "method": request.method})
            return error_response(404, f"Invalid URL ({request.method} {request.path})", code=None)
        try:
            return await endpoint(request, body, behaviour)
        except p.BadRequest as exc:
            return error_response(400, exc.message, param=exc.param)

    def _usage(self, prompt_tokens: int, words: int, model: str, behaviour: Behaviour) -> p.JSON | None:
        if behaviour.omit_usage:
            return None
        reasoning = p.reasoning_tokens(model)
        if behaviour.forced_usage is not None:
            pt, ct, total = behaviour.forced_usage
            cached = behaviour.cached_tokens
            return p.make_usage(pt, ct, cached_tokens=cached, reasoning=reasoning, total_tokens=total)
        completion = words + reasoning  # like the real API, completion_tokens include reasoning tokens
        return p.make_usage(
            prompt_tokens, completion, cached_tokens=behaviour.cached_tokens, reasoning=reasoning
        )

    def _chunk_delay_s(self, behaviour: Behaviour) -> float:
        delay_ms = self.chunk_delay_ms if behaviour.chunk_delay_ms is None else behaviour.chunk_delay_ms
        return delay_ms / 1000

    async def _chat(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _object_body(raw)
        model = p.require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise p.BadRequest("'messages' must be a non-empty array.", "messages")
        words, finish = p.plan_completion(body, behaviour.chunks)
        usage = self._usage(p.count_chat_prompt_tokens(messages), len(words), model, behaviour)
        response_id, created = self._next_id("chatcmpl-"), int(time.time())
        if body.get("stream") is True:
            plan = chat_stream_plan(response_id, created, model, words, finish, usage, _include_usage(body))
            delay = self._chunk_delay_s(behaviour)
            return await send_stream(request, plan, delay, behaviour.drop_mid_stream, self.stats)
        return json_response(p.chat_completion(response_id, created, model, " ".join(words), finish, usage))

    async def _completions(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _object_body(raw)
        model = p.require_model(body)
        if "prompt" not in body:
            raise p.BadRequest("'prompt' is a required property.", "prompt")
        words, finish = p.plan_completion(body, behaviour.chunks)
        usage = self._usage(p.count_input_tokens(body["prompt"]), len(words), model, behaviour)
        response_id, created = self._next_id("cmpl-"), int(time.time())
        if body.get("stream") is True:
            plan = text_stream_plan(response_id, created, model, words, finish, usage, _include_usage(body))
            delay = self._chunk_delay_s(behaviour)
            return await send_stream(request, plan, delay, behaviour.drop_mid_stream, self.stats)
        return json_response(p.text_completion(response_id, created, model, " ".join(words), finish, usage))

    async def _embeddings(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _object_body(raw)
        usage: p.JSON | None = None
        if behaviour.forced_usage is not None:
            pt, ct, total = behaviour.forced_usage
            usage = {"prompt_tokens": pt, "total_tokens": pt + ct if total is None else total}
        elif not behaviour.omit_usage:
            prompt_tokens = p.count_input_tokens(body.get("input"))
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return json_response(p.embeddings_response(body, usage))

    async def _models(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type="application/json")

    async def _fake_requests(self, request: web.Request) -> web.Response:
        return json_response(list(self.recorded))

    async def _fake_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"ok": True})

    async def _fake_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats.as_dict())
