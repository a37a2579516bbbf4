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


def encode_multipart(fields: list[tuple[str, str | tuple[str, bytes]]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; a (filename, bytes) value is a file part."""
    boundary = "fake-upstream-test-boundary-7MA4YWxkTrZu0gW"
    parts: list[bytes] = []
    for name, value in fields:
        if isinstance(value, tuple):
            filename, data = value
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            parts.append(f"--{boundary}\r\n{head}".encode() + data + b"\r\n")
        else:
            head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
            parts.append(f"--{boundary}\r\n{head}{value}\r\n".encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_http(
    url: str, method: str = "POST", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Any request, any body; returns (status, lower-cased headers, raw body)."""
    all_headers = {"Authorization": f"Bearer {API_KEY}", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def multipart_http(
    url: str, fields: list[tuple[str, str | tuple[str, bytes]]], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data, content_type = encode_multipart(fields)
    status, response_headers, body = raw_http(url, "POST", data, {"Content-Type": content_type, **(headers or {})})
    if response_headers.get("content-type", "").startswith("application/json"):
        return status, json.loads(body)
    return status, body.decode()
