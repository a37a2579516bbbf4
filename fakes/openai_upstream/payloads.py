"""Deterministic token accounting and OpenAI wire-format payload builders (pure functions)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import orjson

JSON = dict[str, Any]

WORDS: tuple[str, ...] = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim",
)  # fmt: skip
DEFAULT_COMPLETION_WORDS = 16
TOKENS_PER_MESSAGE = 3
REASONING_TOKENS = 4
EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 64


class BadRequest(Exception):
    """The request body is not something the real API would accept (answered with HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def dumps(obj: object) -> bytes:
    """orjson, falling back to the stdlib for integers beyond 64 bits (forced "huge" usage)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def generate_words(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def count_words(text: str) -> int:
    return len(text.split())


def _content_words(content: object) -> int:
    if isinstance(content, str):
        return count_words(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += count_words(part["text"])
            elif isinstance(part, str):
                total += count_words(part)
        return total
    return 0


def count_chat_prompt_tokens(messages: list[Any]) -> int:
    """Words across all message contents plus TOKENS_PER_MESSAGE per message."""
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        if isinstance(message, dict):
            total += _content_words(message.get("content"))
    return total


def count_input_tokens(value: object) -> int:
    """Prompt/input tokens: words of strings, length of token arrays, summed over lists."""
    if isinstance(value, str):
        return count_words(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(count_input_tokens(v) for v in value)
    return 0


def require_model(body: JSON) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def completion_limit(body: JSON) -> int | None:
    """max_completion_tokens (preferred) or max_tokens, validated like the real API."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"Invalid '{key}': expected an integer >= 1, got {value!r}.", key)
        return value
    return None


def plan_completion(body: JSON, forced_chunks: int | None) -> tuple[list[str], str]:
    """Words to generate and the finish_reason."""
    if forced_chunks is not None:
        return generate_words(forced_chunks), "stop"
    limit = completion_limit(body)
    if limit is not None and limit < DEFAULT_COMPLETION_WORDS:
        return generate_words(limit), "length"
    return generate_words(DEFAULT_COMPLETION_WORDS), "stop"


def reasoning_tokens(model: str) -> int:
    return REASONING_TOKENS if model.startswith("o") else 0


def make_usage(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning: int = 0,
    total_tokens: int | None = None,
) -> JSON:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens if total_tokens is None else total_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def choice_count(body: JSON, key: str = "n", maximum: int = 128) -> int:
    """`n` (or `best_of`), validated like the real API; 1 when absent."""
    value = body.get(key)
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise BadRequest(f"Invalid '{key}': expected an integer in [1, {maximum}], got {value!r}.", key)
    return value


def completion_prompts(value: object) -> list[object]:
    """The legacy `prompt`: a string, an array of strings, an array of tokens, or an array of token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value) or all(
            isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
            for v in value
        ):
            return list(value)
    raise BadRequest(
        "Invalid 'prompt': expected a string, an array of strings, an array of tokens or an array of token "
        "arrays.",
        "prompt",
    )


def chat_completion(
    response_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    usage: JSON | None,
    choices: int = 1,
) -> JSON:
    payload: JSON = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            for index in range(choices)
        ],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if usage is not None:
        payload["usage"] = usage
    return payload


def text_completion(
    response_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage: JSON | None,
    choices: int = 1,
) -> JSON:
    payload: JSON = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
            for index in range(choices)
        ],
        "system_fingerprint": "fp_fake",
    }
    if usage is not None:
        payload["usage"] = usage
    return payload


def count_responses_input_tokens(body: JSON) -> int:
    """Responses API input like chat: a string input is one user message; every input item counts
    TOKENS_PER_MESSAGE plus the words of its content (or of a tool output); instructions are one more message."""
    value = body.get("input")
    total = 0
    if isinstance(value, str):
        total = TOKENS_PER_MESSAGE + count_words(value)
    elif isinstance(value, list):
        for item in value:
            total += TOKENS_PER_MESSAGE
            if isinstance(item, dict):
                total += _content_words(item.get("content"))
                if isinstance(item.get("output"), str):
                    total += count_words(item["output"])
            elif isinstance(item, str):
                total += count_words(item)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += TOKENS_PER_MESSAGE + count_words(instructions)
    return total


def require_responses_input(body: JSON) -> None:
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and value):
        return
    if value is None and (body.get("previous_response_id") or body.get("prompt")):
        return
    raise BadRequest("Invalid 'input': expected a string or a non-empty array of input items.", "input")


def responses_usage(
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    reasoning: int = 0,
    total_tokens: int | None = None,
) -> JSON:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens if total_tokens is None else total_tokens,
    }


def response_message(item_id: str, text: str, status: str) -> JSON:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
        "role": "assistant",
    }


def response_object(
    response_id: str,
    created_at: int,
    model: str,
    body: JSON,
    *,
    status: str,
    output: list[JSON],
    usage: JSON | None,
    incomplete: bool = False,
) -> JSON:
    """A `response` object as POST /v1/responses returns it (and the stream events embed it)."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": "medium" if reasoning_tokens(model) else None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def embedding_vector(item: object, dimensions: int) -> list[float]:
    """A small deterministic vector in [-1, 1] derived from a hash of the input."""
    raw = item.encode() if isinstance(item, str) else orjson.dumps(item)
    digest = hashlib.blake2b(raw, digest_size=dimensions).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest]


def embedding_inputs(value: object) -> list[object]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all(isinstance(v, str | list) for v in value):
            return list(value)
    raise BadRequest("'input' must be a non-empty string, array of strings or array of token arrays", "input")


def embeddings_response(body: JSON, usage: JSON | None) -> JSON:
    model = require_model(body)
    inputs = embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise BadRequest(f"'dimensions' must be an integer in [1, {MAX_EMBEDDING_DIMENSIONS}]", "dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data: list[JSON] = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dimensions)
        encoded: object = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    payload: JSON = {"object": "list", "data": data, "model": model}
    if usage is not None:
        payload["usage"] = usage
    return payload


def models_list(models: list[str], created: int) -> JSON:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": "system"} for m in models],
    }
