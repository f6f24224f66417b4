"""The base of every request body: JSON types are taken as they are, never coerced.

Pydantic's lax mode reads ``0`` as ``false``, ``"7"`` as ``7`` and ``1.0`` as ``1``; a body that the OpenAPI schema
calls invalid must be refused with 422, not reinterpreted. Strict mode keeps the one coercion JSON needs (an integer
where a number is expected)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    """A request body model: strict types. Subclasses add their own ``model_config`` keys (it merges)."""

    model_config = ConfigDict(strict=True)
