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
from aiohttp import BodyPartReader, web

from fakes.openai_upstream import media as m
from fakes.openai_upstream import payloads as p
from fakes.openai_upstream.control import BadControlHeader, Behaviour, error_response, parse_behaviour
from fakes.openai_upstream.streaming import (
    Stats,
    chat_stream_plan,
    responses_stream_plan,
    send_stream,
    text_stream_plan,
)

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "o3-mini",
    "text-embedding-3-small",
    "gpt-image-1",
    "dall-e-3",
    "whisper-1",
    "gpt-4o-transcribe",
    "tts-1",
    "omni-moderation-latest",
)
MAX_RECORDED = 200
MODELS_CREATED = 1_700_000_000


class RecordedRequest(TypedDict):
    method: str
    path: str  # decoded, as routed
    raw_path: str  # exactly as received (percent-escapes kept), without the query
    query: str  # the raw query string, "" when none
    headers: dict[str, str]
    # JSON bodies: the parsed JSON (None when empty or not JSON); multipart/form-data: {field: text,
    # file field: {"filename", "size"}}, a repeated field name maps to a list of its values in order.
    body: Any


_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG_KEY = (
    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys."
)


def mask_key(key: str) -> str:
    """Like OpenAI's 401: the first 6 and last 4 characters, the rest as '*' (short keys: a prefix only)."""
    if len(key) >= 14:
        return key[:6] + "*" * (len(key) - 10) + key[-4:]
    head = min(3, len(key) // 2)
    return key[:head] + "*" * (len(key) - head)


def _unauthorized(authorization: str | None) -> web.Response:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return error_response(401, _MISSING_KEY, code="invalid_api_key")
    return error_response(401, _WRONG_KEY.format(mask_key(token)), code="invalid_api_key")

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


async def _read_form(request: web.Request) -> dict[str, Any] | None:
    """A multipart/form-data body: text fields as str, file parts as {"filename", "size"}, a repeated field
    name as the list of its values; None when the body is not valid multipart."""
    form: dict[str, Any] = {}
    repeated: set[str] = set()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):  # a nested multipart: not something OpenAI accepts
                await part.release()
                continue
            name = part.name or ""
            value: object
            if part.filename is not None:
                size = 0
                while chunk := await part.read_chunk():
                    size += len(chunk)
                value = {"filename": part.filename, "size": size}
            else:
                value = await part.text()
            if name in repeated:
                form[name].append(value)
            elif name in form:
                form[name] = [form[name], value]
                repeated.add(name)
            else:
                form[name] = value
    except (ValueError, AssertionError, UnicodeDecodeError, RuntimeError):
        return None
    return form


async def _read_body(request: web.Request) -> Any:
    if request.content_type == "multipart/form-data":
        return await _read_form(request)
    return _parse_body(await request.read())


def _object_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise p.BadRequest("We could not parse the JSON body of your request: expected a JSON object.")
    return body


def _form_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise p.BadRequest("We could not parse your request body: expected multipart/form-data.")
    return body


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_output_tokens")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise p.BadRequest(
            f"Invalid 'max_output_tokens': expected an integer >= 1, got {value!r}.", "max_output_tokens"
        )
    return value


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
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/images/generations"): self._images_generations,
            ("POST", "/v1/images/edits"): self._images_edits,
            ("POST", "/v1/images/variations"): self._images_variations,
            ("POST", "/v1/audio/speech"): self._audio_speech,
            ("POST", "/v1/audio/transcriptions"): self._audio_transcriptions,
            ("POST", "/v1/audio/translations"): self._audio_translations,
            ("POST", "/v1/moderations"): self._moderations,
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
        body = await _read_body(request)
        headers = request.headers
        raw_path, _, query = request.raw_path.partition("?")
        self.stats.requests += 1
        self.recorded.append(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": raw_path,
                "query": query,
                "headers": {k.lower(): v for k, v in headers.items()},
                "body": body,
            }
        )
        if self._expected_auth is not None and headers.get("Authorization") != self._expected_auth:
            return _unauthorized(headers.get("Authorization"))
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
                echo = {"object": "echo", "path": request.path, "method": request.method, "raw_path": raw_path}
                return json_response(echo)
            return error_response(404, f"Invalid URL ({request.method} {request.path})", code=None)
        try:
            return await endpoint(request, body, behaviour)
        except p.BadRequest as exc:
            return error_response(400, exc.message, param=exc.param)

    def _usage(
        self, prompt_tokens: int, words: int, model: str, behaviour: Behaviour, generations: int = 1
    ) -> p.JSON | None:
        """Chat/legacy usage; `generations` completions of `words` words each were generated (n, best_of)."""
        if behaviour.omit_usage:
            return None
        reasoning = p.reasoning_tokens(model) * generations
        if behaviour.forced_usage is not None:
            pt, ct, total = behaviour.forced_usage
            cached = behaviour.cached_tokens
            return p.make_usage(pt, ct, cached_tokens=cached, reasoning=reasoning, total_tokens=total)
        completion = words * generations + reasoning  # like the real API, completion_tokens include reasoning
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
        n = p.choice_count(body)
        words, finish = p.plan_completion(body, behaviour.chunks)
        usage = self._usage(p.count_chat_prompt_tokens(messages), len(words), model, behaviour, n)
        response_id, created = self._next_id("chatcmpl-"), int(time.time())
        if body.get("stream") is True:
            plan = chat_stream_plan(response_id, created, model, words, finish, usage, _include_usage(body), n)
            delay = self._chunk_delay_s(behaviour)
            return await send_stream(request, plan, delay, behaviour.drop_mid_stream, self.stats)
        return json_response(p.chat_completion(response_id, created, model, " ".join(words), finish, usage, n))

    async def _completions(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _object_body(raw)
        model = p.require_model(body)
        if "prompt" not in body:
            raise p.BadRequest("'prompt' is a required property.", "prompt")
        prompts = p.completion_prompts(body["prompt"])
        n = p.choice_count(body)
        best_of = p.choice_count(body, "best_of", maximum=20) if body.get("best_of") is not None else n
        if best_of < n:
            raise p.BadRequest("Invalid 'best_of': must be greater than or equal to 'n'.", "best_of")
        words, finish = p.plan_completion(body, behaviour.chunks)
        prompt_tokens = sum(p.count_input_tokens(prompt) for prompt in prompts)
        usage = self._usage(prompt_tokens, len(words), model, behaviour, len(prompts) * best_of)
        response_id, created = self._next_id("cmpl-"), int(time.time())
        choices = len(prompts) * n  # choice index = prompt index * n + j, as OpenAI numbers them
        text = " ".join(words)
        if body.get("stream") is True:
            plan = text_stream_plan(response_id, created, model, words, finish, usage, _include_usage(body), choices)
            delay = self._chunk_delay_s(behaviour)
            return await send_stream(request, plan, delay, behaviour.drop_mid_stream, self.stats)
        return json_response(p.text_completion(response_id, created, model, text, finish, usage, choices))

    async def _responses(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _object_body(raw)
        model = p.require_model(body)
        p.require_responses_input(body)
        limit = _max_output_tokens(body)
        incomplete = False
        if behaviour.chunks is not None:
            words = p.generate_words(behaviour.chunks)
        elif limit is not None and limit < p.DEFAULT_COMPLETION_WORDS:
            words, incomplete = p.generate_words(limit), True
        else:
            words = p.generate_words(p.DEFAULT_COMPLETION_WORDS)
        reasoning = p.reasoning_tokens(model)
        usage: p.JSON | None = None
        if behaviour.forced_usage is not None:
            pt, ct, total = behaviour.forced_usage
            usage = p.responses_usage(
                pt, ct, cached_tokens=behaviour.cached_tokens, reasoning=reasoning, total_tokens=total
            )
        elif not behaviour.omit_usage:
            usage = p.responses_usage(
                p.count_responses_input_tokens(body),
                len(words) + reasoning,
                cached_tokens=behaviour.cached_tokens,
                reasoning=reasoning,
            )
        response_id, item_id, created = self._next_id("resp_"), self._next_id("msg_"), int(time.time())
        status = "incomplete" if incomplete else "completed"
        message = p.response_message(item_id, " ".join(words), status)
        final = p.response_object(
            response_id, created, model, body, status=status, output=[message], usage=usage, incomplete=incomplete
        )
        if body.get("stream") is True:
            opening = p.response_object(
                response_id, created, model, body, status="in_progress", output=[], usage=None
            )
            plan = responses_stream_plan(opening, final, words)
            delay = self._chunk_delay_s(behaviour)
            return await send_stream(request, plan, delay, behaviour.drop_mid_stream, self.stats)
        return json_response(final)

    def _images(self, body: dict[str, Any], behaviour: Behaviour, input_images: int = 0) -> web.Response:
        payload = m.images_response(
            body,
            int(time.time()),
            self._next_id("img-"),
            input_images=input_images,
            forced_usage=behaviour.forced_usage,
            omit_usage=behaviour.omit_usage,
        )
        return json_response(payload)

    async def _images_generations(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _object_body(raw)
        m.required_str(body, "prompt")
        return self._images(body, behaviour)

    async def _images_edits(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _form_body(raw)
        images = m.files(body, "image", "image[]")
        if not images:
            raise p.BadRequest("'image' is a required property.", "image")
        m.required_str(body, "prompt")
        m.files(body, "mask")
        return self._images(body, behaviour, input_images=len(images))

    async def _images_variations(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        body = _form_body(raw)
        images = m.files(body, "image")
        if len(images) != 1:
            raise p.BadRequest("'image' is a required property (exactly one image file).", "image")
        return self._images(body, behaviour, input_images=1)

    async def _audio_speech(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        audio, content_type = m.speech_audio(_object_body(raw))
        return web.Response(body=audio, content_type=content_type)

    async def _transcribe(self, raw: Any, behaviour: Behaviour, task: str) -> web.Response:
        payload, _ = m.transcription(
            _form_body(raw),
            task=task,
            words=behaviour.chunks,
            forced_usage=behaviour.forced_usage,
            omit_usage=behaviour.omit_usage,
        )
        if isinstance(payload, str):
            return web.Response(text=payload, content_type="text/plain")
        return json_response(payload)

    async def _audio_transcriptions(
        self, request: web.Request, raw: Any, behaviour: Behaviour
    ) -> web.StreamResponse:
        return await self._transcribe(raw, behaviour, "transcribe")

    async def _audio_translations(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        return await self._transcribe(raw, behaviour, "translate")

    async def _moderations(self, request: web.Request, raw: Any, behaviour: Behaviour) -> web.StreamResponse:
        return json_response(m.moderation_response(_object_body(raw), self._next_id("modr-")))

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
