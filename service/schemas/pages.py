"""One shape for every paginated list: ``items``, ``offset``, ``limit``, ``next_offset``."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    offset: int
    limit: int
    next_offset: int | None = Field(description="Pass as ?offset= for the next page; null on the last page.")
