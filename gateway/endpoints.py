"""The allow-list of OpenAI `/v1` endpoints the gateway serves, and how each is billed.

Every request under `/v1` is looked up here (method and plain path, see gateway.paths). An endpoint is
- `billed`: the model named in the body is checked against the plan and `calls(body)` calls are counted;
- `free`: costs nothing upstream; the key is checked and the request rate-limited, nothing is counted;
- `local`: answered by the gateway from the catalog, never forwarded;
- `refused`: costs upstream money in a way the gateway cannot meter yet (files, batches, ...): 403 on every plan.
A path not in the table is 404 `unknown_url`; a known path with another method is 405 with `Allow`.
Only the body fields listed for an endpoint are forwarded; any other field is refused with 400. The README's
endpoint table is `markdown_table()` (a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.catalog import MAX_CALLS_PER_REQUEST
from gateway.errors import InvalidRequest, MethodNotAllowed, NotFound, PermissionDenied

Body = Mapping[str, Any]


def _int_field(body: Body, name: str, default: int) -> int:
    """An integer body field: a JSON integer, or (multipart forms) its decimal text; 400 otherwise."""
    value = body.get(name, default)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CALLS_PER_REQUEST:
        raise InvalidRequest(f"'{name}' must be an integer from 1 to {MAX_CALLS_PER_REQUEST}.", param=name,
                             code="invalid_value")
    return value


def one_call(body: Body) -> int:
    return 1


def n_calls(body: Body) -> int:
    """Chat completions, image generations: one call per choice or image asked for (`n`, default 1)."""
    return _int_field(body, "n", 1)


def prompts_times_n(body: Body) -> int:
    """Legacy completions: prompts x max(n, best_of) (the upstream generates best_of candidates per prompt)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = 1
    elif isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
            prompts = len(prompt)           # several prompts, as text or as token arrays
        elif all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            prompts = 1                     # one prompt as a token array
        else:
            raise InvalidRequest("'prompt' must be a string, a list of strings, a list of token ids or a list "
                                 "of token-id lists.", param="prompt", code="invalid_value")
    else:
        raise InvalidRequest("'prompt' must be a string or a non-empty list.", param="prompt", code="invalid_value")
    n = _int_field(body, "n", 1)
    best_of = _int_field(body, "best_of", n)
    if best_of < n:
        raise InvalidRequest("'best_of' must be at least 'n'.", param="best_of", code="invalid_value")
    return prompts * best_of


@dataclass(frozen=True)
class Endpoint:
    family: str
    method: str
    path: str                      # `/v1/models/{model}`: one trailing parameter
    kind: str                      # billed | free | local | refused
    body: str = "none"             # json | multipart | none
    fields: frozenset[str] = frozenset()
    repeated: frozenset[str] = frozenset()       # multipart fields that may be given more than once
    calls: Callable[[Body], int] = one_call
    counts: str = "1"              # how `calls` counts, for the README
    stream: str = ""               # "chat": SSE with usage asked for; "responses": SSE with usage in its events
    token_limits: tuple[str, ...] = ()           # output-token limit fields, capped per plan (set when absent)
    tools: bool = False            # `tools` may hold function tools only (hosted tools cost extra upstream)
    models: frozenset[str] = frozenset()         # free endpoints: the only models a body may name


COMMON = frozenset({"model", "user", "safety_identifier", "metadata", "store"})
CHAT = Endpoint(
    "chat", "POST", "/v1/chat/completions", "billed", "json", COMMON | {
        "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "modalities", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "seed", "stop", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "verbosity"},
    calls=n_calls, counts="`n`", stream="chat", token_limits=("max_completion_tokens", "max_tokens"), tools=True)
TABLE: tuple[Endpoint, ...] = (
    CHAT,
    Endpoint("completions", "POST", "/v1/completions", "billed", "json", frozenset({
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
        "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user"}),
        calls=prompts_times_n, counts="prompts x max(`n`, `best_of`)", stream="chat", token_limits=("max_tokens",)),
    Endpoint("embeddings", "POST", "/v1/embeddings", "billed", "json",
             frozenset({"model", "input", "dimensions", "encoding_format", "user"}), counts="1 (tokens priced)"),
    Endpoint("responses", "POST", "/v1/responses", "billed", "json", COMMON | {
        "input", "include", "instructions", "max_output_tokens", "max_tool_calls", "parallel_tool_calls",
        "prompt_cache_key", "reasoning", "stream", "stream_options", "temperature", "text", "tool_choice", "tools",
        "top_logprobs", "top_p", "truncation"},
        stream="responses", token_limits=("max_output_tokens",), tools=True),
    Endpoint("images", "POST", "/v1/images/generations", "billed", "json", frozenset({
        "model", "prompt", "n", "quality", "response_format", "size", "style", "user", "background", "moderation",
        "output_compression", "output_format"}), calls=n_calls, counts="`n` images"),
    Endpoint("images", "POST", "/v1/images/edits", "billed", "multipart", frozenset({
        "model", "image", "image[]", "mask", "prompt", "n", "size", "response_format", "user", "quality",
        "background", "input_fidelity", "output_format", "output_compression"}),
        repeated=frozenset({"image[]"}), calls=n_calls, counts="`n` images"),
    Endpoint("images", "POST", "/v1/images/variations", "billed", "multipart",
             frozenset({"model", "image", "n", "response_format", "size", "user"}), calls=n_calls,
             counts="`n` images"),
    Endpoint("audio", "POST", "/v1/audio/speech", "billed", "json",
             frozenset({"model", "input", "voice", "instructions", "response_format", "speed"})),
    Endpoint("audio", "POST", "/v1/audio/transcriptions", "billed", "multipart", frozenset({
        "model", "file", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
        "include[]", "chunking_strategy"}), repeated=frozenset({"timestamp_granularities[]", "include[]"})),
    Endpoint("audio", "POST", "/v1/audio/translations", "billed", "multipart",
             frozenset({"model", "file", "prompt", "response_format", "temperature"})),
    Endpoint("moderations", "POST", "/v1/moderations", "free", "json", frozenset({"model", "input"}),
             models=frozenset({"omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
                               "text-moderation-stable"})),
    Endpoint("models", "GET", "/v1/models", "local"),
    Endpoint("models", "GET", "/v1/models/{model}", "local"),
)
# Body fields that exist upstream but are refused here, with the reason the client is told.
REFUSED_FIELDS = {
    "previous_response_id": "stored responses are not served through the gateway",
    "conversation": "stored conversations are not served through the gateway",
    "prompt": "stored prompt templates are not served through the gateway",
    "background": "background responses are not served through the gateway",
    "web_search_options": "hosted web search is not served through the gateway",
    "service_tier": "the gateway prices every call at the default tier",
}
REFUSED_FAMILIES = ("files", "uploads", "batches", "fine_tuning", "assistants", "threads", "vector_stores",
                    "realtime", "containers", "evals", "conversations", "organization", "videos", "chatkit")
FUNCTION_TOOLS = frozenset({"function", "custom"})

_EXACT: dict[str, dict[str, Endpoint]] = {}
_PARAM: dict[str, dict[str, Endpoint]] = {}     # prefix ending in '/' -> method -> endpoint
for _e in TABLE:
    if _e.path.endswith("}"):
        _PARAM.setdefault(_e.path[: _e.path.rindex("/") + 1], {})[_e.method] = _e
    else:
        _EXACT.setdefault(_e.path, {})[_e.method] = _e


def lookup(method: str, path: str) -> tuple[Endpoint, str]:
    """(endpoint, path parameter or "") for a plain path; NotFound, MethodNotAllowed or PermissionDenied."""
    by_method = _EXACT.get(path)
    param = ""
    if by_method is None:
        prefix, _, param = path.rpartition("/")
        by_method = _PARAM.get(prefix + "/")
    if by_method is None:
        family = path.split("/")[2] if path.count("/") >= 2 else ""
        if path.startswith("/v1/") and family in REFUSED_FAMILIES:
            raise PermissionDenied(f"The /v1/{family} endpoints are not served through this gateway: their upstream "
                                   "cost cannot be metered per account yet.", code="endpoint_not_available")
        raise NotFound(f"Unknown path {path!r}: no such endpoint on this gateway.", code="unknown_url")
    endpoint = by_method.get(method)
    if endpoint is None:
        allowed = ", ".join(sorted(by_method))
        raise MethodNotAllowed(f"Method {method} is not allowed on {path}; use {allowed}.",
                               headers={"allow": allowed})
    return endpoint, param


def check_fields(endpoint: Endpoint, body: Body) -> None:
    """400 for a body field the endpoint does not forward, and for hosted tools on a tools field."""
    for name in body:
        if name not in endpoint.fields:
            reason = REFUSED_FIELDS.get(name)
            if reason is not None:
                raise InvalidRequest(f"'{name}' is not supported: {reason}.", param=name,
                                     code="unsupported_parameter")
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}.", param=name,
                                 code="unknown_parameter")
    # Fields that decide how the answer is relayed and read for usage must mean to the gateway what they mean
    # upstream: `"stream": "true"` would stream there and be read here as a whole body without usage.
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be true or false.", param="stream", code="invalid_value")
    if "stream_options" in body and not isinstance(body["stream_options"], dict | None):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_value")
    if endpoint.tools and "tools" in body:
        tools = body["tools"]
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequest("'tools' must be a list of objects.", param="tools", code="invalid_value")
        for tool in tools:
            if tool.get("type") not in FUNCTION_TOOLS:
                raise InvalidRequest(f"Tool type {tool.get('type')!r} is not available through the gateway; only "
                                     "function tools are.", param="tools", code="tool_not_available")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in (*FUNCTION_TOOLS, "allowed_tools"):
        raise InvalidRequest(f"Tool type {choice.get('type')!r} is not available through the gateway; only "
                             "function tools are.", param="tool_choice", code="tool_not_available")
    if endpoint.stream == "responses" and body.get("store") is True:
        raise InvalidRequest("'store' is not supported: stored responses are not served through the gateway.",
                             param="store", code="unsupported_parameter")


def requested_max_tokens(endpoint: Endpoint, body: Body) -> int:
    """The largest output-token limit the body asks for (0 when none is given); 400 for a malformed one."""
    largest = 0
    for name in endpoint.token_limits:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name, code="invalid_value")
        largest = max(largest, value)
    return largest


def markdown_table() -> str:
    """The README's endpoint table."""
    rows = ["| method | path | family | policy | calls counted |", "| --- | --- | --- | --- | --- |"]
    policy = {"billed": "billed: model from the body, checked against the plan",
              "free": "forwarded free: key checked, rate-limited, not counted",
              "local": "answered by the gateway from the catalog, filtered to the plan"}
    for e in TABLE:
        source = " (multipart form field)" if e.body == "multipart" and e.kind == "billed" else ""
        rows.append(f"| {e.method} | `{e.path}` | {e.family} | {policy[e.kind]}{source} | "
                    f"{e.counts if e.kind == 'billed' else '0'} |")
    families = ", ".join(f"`/v1/{f}`" for f in REFUSED_FAMILIES)
    rows.append(f"| any | {families} | | refused on every plan (403 `endpoint_not_available`) | 0 |")
    return "\n".join(rows)
