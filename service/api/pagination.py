"""Offset pagination for the list routes: ``Offset`` (the query parameter) and ``paginate`` (one row more than
the page, to know whether a next page exists). Responses use ``service.schemas.pages.Page``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Query

Offset = Annotated[int, Query(ge=0, le=10_000_000)]


def paginate(fetch: Callable[[int, int], list[Any]], offset: int, limit: int) -> dict[str, Any]:
    """``fetch(offset, n)`` returns up to ``n`` rows from ``offset``; the result holds a ``Page``'s fields."""
    rows = fetch(offset, limit + 1)
    more = len(rows) > limit
    return {"items": rows[:limit], "offset": offset, "limit": limit, "next_offset": offset + limit if more else None}
