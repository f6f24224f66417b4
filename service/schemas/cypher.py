"""Request and response of POST /cypher."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.schemas.request import RequestBody


class CypherRequest(RequestBody):
    # A query with no non-space character is refused (rule 'non-empty'): the schema says so, so that a request
    # the schema allows is never a 422.
    query: str = Field(min_length=1, max_length=20_000, pattern=r"\S", examples=[
        "MATCH (f:Feature)-[o:OCCURS]->(c:Corpus {corpus_id: $corpus}) RETURN f.fkey, o.n_graphs "
        "ORDER BY o.n_graphs DESC LIMIT 10"])
    parameters: dict[str, Any] = Field(default_factory=dict, examples=[{"corpus": "ioi-demo"}])
    max_rows: int | None = Field(None, ge=1, le=100_000, description="At most the server's row cap.")


class CypherOut(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    truncated_by: str | None = Field(description="'max_rows' or 'max_bytes' when the stream was cut.")
    elapsed_ms: float
    plan_operators: list[str]


class CypherRefusal(BaseModel):
    rule: str = Field(examples=["no-writes"])
    message: str
