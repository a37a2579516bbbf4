"""Cursor pagination, Stripe's way: `?limit=1..100` (default 20) and `?starting_after=<id of the last item seen>`;
the answer is `{"object": "list", "data": [...], "has_more": bool, "next_cursor": str | null}`. Items are in a
stable order (the listing's own); a cursor that is not an item of the list is 400 `invalid_cursor`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from api.errors import ApiError

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=100, description="How many items, 1 to 100.")]
Cursor = Annotated[str | None, Query(max_length=200, description="The `next_cursor` of the previous page.")]


class Page(BaseModel, Generic[T]):
    object: str = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None


def paginate(items: Sequence[dict[str, Any]], limit: int, starting_after: str | None,
             key: str = "id") -> dict[str, Any]:
    start = 0
    if starting_after is not None:
        ids = [str(item[key]) for item in items]
        if starting_after not in ids:
            raise ApiError(400, "invalid_cursor", "This cursor is not from this list.", param="starting_after")
        start = ids.index(starting_after) + 1
    page = list(items[start:start + limit])
    has_more = start + limit < len(items)
    return {"object": "list", "data": page, "has_more": has_more,
            "next_cursor": str(page[-1][key]) if has_more and page else None}
