"""multipart/form-data request bodies (audio transcriptions, image edits): parsed once, checked, re-encoded.

The form is parsed with python-multipart (through Starlette) from the body already read under the size limit.
The upstream receives a form the gateway wrote itself from the parsed fields, so the fields it checked (the
model above all) are exactly the fields the upstream reads: no parser differences, no duplicate `model`.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from gateway.errors import InvalidRequest

MAX_FILES = 16
MAX_FIELDS = 64
UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str | None) -> str:
    """A filename the re-encoded form can carry unambiguously: letters, digits and `._-` kept (the extension tells
    the upstream the audio or image format), anything else (quotes, backslashes, control characters) as `_`."""
    cleaned = UNSAFE_FILENAME.sub("_", name or "")[-128:]
    return cleaned if cleaned.strip("._") else "file"


@dataclass
class Form:
    fields: dict[str, Any]             # name -> text, or {"filename", "content_type", "data"} for a file
    items: list[tuple[str, Any]]       # every part in order (repeated fields more than once)

    def encoded(self) -> aiohttp.FormData:
        """The form as the upstream receives it; 400 when a part cannot be written back unambiguously."""
        form = aiohttp.FormData(quote_fields=False)
        try:
            for name, value in self.items:
                if isinstance(value, dict):
                    form.add_field(name, value["data"], filename=value["filename"],
                                   content_type=value["content_type"])
                else:
                    form.add_field(name, value)
        except ValueError as exc:
            raise InvalidRequest(f"The multipart/form-data body cannot be forwarded: {exc}.",
                                 code="invalid_multipart") from None
        return form


async def parse_form(scope: MutableMapping[str, Any], body: bytes, repeated: frozenset[str]) -> Form:
    """The form in `body`; 400 when it is not multipart/form-data, is malformed, or repeats a single field."""
    content_type = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"content-type"), "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("This endpoint takes a multipart/form-data body.", code="invalid_content_type")

    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, receive)
    try:
        parsed = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=len(body) + 1)
    except HTTPException as exc:       # Starlette reports the parser's errors (too many files, ...) this way
        raise InvalidRequest(f"The multipart/form-data body could not be parsed: {exc.detail}",
                             code="invalid_multipart") from None
    except (MultiPartException, ValueError, AssertionError) as exc:
        raise InvalidRequest(f"The multipart/form-data body could not be parsed: {exc}.",
                             code="invalid_multipart") from None
    items: list[tuple[str, Any]] = []
    fields: dict[str, Any] = {}
    try:
        for name, part in parsed.multi_items():
            if name in fields and name not in repeated:
                raise InvalidRequest(f"The form field '{name}' is given more than once.", param=name,
                                     code="duplicate_parameter")
            value: Any = part
            if isinstance(part, UploadFile):
                value = {"filename": safe_filename(part.filename), "data": await part.read(),
                         "content_type": _content_type(part.content_type)}
            fields[name] = value
            items.append((name, value))
    finally:
        await parsed.close()
    return Form(fields, items)


def _content_type(value: str | None) -> str:
    """A file part's media type if it is a plain `type/subtype`, else application/octet-stream."""
    if value and re.fullmatch(r"[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+", value):
        return value
    return "application/octet-stream"
