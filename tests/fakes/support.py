"""Shared constants and small HTTP helpers for the fake-upstream tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.conftest import UPSTREAM_KEY

API_KEY = UPSTREAM_KEY   # the session fake upstream's key
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},  # 3 words + 3
    {"role": "user", "content": [{"type": "text", "text": "Say hello to the world"}]},  # 5 words + 3
]
PROMPT_TOKENS = 14
LOREM_16 = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et"
)


def http(
    url: str, method: str = "GET", body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    all_headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        **(headers or {}),
    }
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
