"""Reads a request body (ASGI `receive`) up to the configured limit, and parses model-call JSON."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive

from gateway.errors import InvalidRequest, PayloadTooLarge


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The body; 413 above `limit` (by Content-Length at once, else as it arrives), 400 when the client goes."""
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Malformed Content-Length header.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"Request body of {declared.decode()} bytes exceeds the limit of {limit} bytes.")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")      # the usual case: the whole body in one message
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] != "http.request":
            raise InvalidRequest("The client closed the connection while sending the body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


def json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return payload


def model_name(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
    return model
