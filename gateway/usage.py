"""Reads the upstream's `usage` object and validates it before anything is counted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.metrics import USAGE_INVALID

MAX_TOKENS = 10**9   # more than any context window; anything larger is a broken upstream


@dataclass(frozen=True)
class TokenCounts:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return None
    return value


def parse_usage(usage: Any) -> TokenCounts | None:
    """A validated TokenCounts, or None when the usage is missing or malformed (counted in metrics).

    Reads both spellings OpenAI uses: chat and completions (`prompt_tokens`, `completion_tokens`,
    `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`) and the Responses,
    images and audio APIs (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`,
    `output_tokens_details.reasoning_tokens`).
    """
    if usage is None:
        return None
    if not isinstance(usage, dict):
        USAGE_INVALID.inc()
        return None
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens", 0)))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens", 0)))
    prompt_details = usage.get("prompt_tokens_details", usage.get("input_tokens_details")) or {}
    completion_details = usage.get("completion_tokens_details", usage.get("output_tokens_details")) or {}
    cached = _count(prompt_details.get("cached_tokens", 0) if isinstance(prompt_details, dict) else -1)
    reasoning = _count(completion_details.get("reasoning_tokens", 0)
                       if isinstance(completion_details, dict) else -1)
    if prompt is None or completion is None or cached is None or reasoning is None or cached > prompt:
        USAGE_INVALID.inc()
        return None
    return TokenCounts(prompt, completion, cached, reasoning)
