from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.pages import Page
from service.schemas.request import RequestBody
from workers.pipeline.registry import ID_PATTERN
from workers.vocabulary.defaults import EDGE_THRESHOLD, NODE_THRESHOLD


class CorpusSettings(RequestBody):
    """How each prompt's graph is computed and stored."""

    model_config = ConfigDict(extra="forbid")

    prune: bool = Field(True, description="Store the influence-pruned graph (False: every node and edge).")
    node_threshold: float = Field(NODE_THRESHOLD, gt=0, le=1, description="Influence pruning: node threshold.")
    edge_threshold: float = Field(EDGE_THRESHOLD, gt=0, le=1, description="Influence pruning: edge threshold.")
    max_features: int | None = Field(None, ge=1, description=(
        "Store at most this many feature nodes per graph (most influential first); the others are folded into "
        "one 'unexpanded' leaf per (site, position), as under max_feature_nodes. A storage cap: it does not "
        "make the computation cheaper."))
    max_feature_nodes: int | None = Field(None, ge=0, le=10_000_000, description=(
        "Node budget of the computation: at most this many active features become rows (the targets first, "
        "then features by estimated influence on the targets, circuit-tracer's rule); the rest stay sources, "
        "summed into one 'unexpanded' leaf per (site, position), so every row stays complete. Bounds time and "
        "memory on long prompts. None: every active feature."))
    batch_size: int = Field(32, ge=1, le=1024, description="Targets per backward pass (speed only).")


class PromptIn(RequestBody):
    model_config = ConfigDict(extra="forbid")

    text: str
    targets: list[Any] = Field(default_factory=list, description=(
        "Engine target strings: 'top', 'logit:TOKEN[@POS]', 'diff:GOOD,BAD[@POS]', 'feat:L2.mlp:p5:f123', or "
        "objects {'logit': TOKEN}, {'diff': [GOOD, BAD]}, {'feature': 'L2.mlp:p5:f123'}. Default: top logits."))


class CorpusRequest(RequestBody):
    """A JSON corpus. The same corpus may be sent as JSONL (Content-Type application/x-ndjson, one prompt
    per line) with model, dictionary_set, name and settings fields as query parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=ID_PATTERN.pattern, description="A registered model_id.")
    dictionary_set: str = Field(pattern=ID_PATTERN.pattern, description="A registered dictionary_set_id for that model.")
    name: str = ""
    prompts: list[str | PromptIn]
    settings: CorpusSettings = Field(default_factory=CorpusSettings)


class Duplicate(BaseModel):
    index: int = Field(description="Position of the dropped prompt in the submission.")
    duplicate_of: int = Field(description="Position of the identical prompt that was kept.")


class CorpusAccepted(BaseModel):
    corpus_id: str
    job_id: str
    n_prompts: int = Field(description="Prompts queued (after deduplication).")
    duplicates: list[Duplicate]
    job_url: str


class CorpusJobOut(BaseModel):
    """The corpus' job (one per corpus), its state and prompt counters."""

    job_id: str
    state: str
    total: int
    done: int
    failed: int
    cancelled: int
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class CorpusSummaryOut(BaseModel):
    corpus_id: str = Field(examples=["c0123456789abcdef"])
    name: str | None = None
    model: str | None = Field(None, description="Registered model_id; null for corpora written outside the "
                                                "pipeline (local circuits, imports).")
    dictionary_set: str | None = None
    n_prompts: int | None = Field(None, description="Prompts queued at submission (after deduplication).")
    n_graphs: int = Field(description="Complete graphs stored for the corpus.")
    created_at: float | None = None
    job: CorpusJobOut | None = Field(None, description="Null when the corpus has no job (not submitted "
                                                       "through POST /corpora).")


class CorpusPageOut(Page[CorpusSummaryOut]):
    pass
