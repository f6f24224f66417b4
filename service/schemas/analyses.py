"""Request and response of the analysis jobs (workers/analysis/jobs.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.schemas.request import RequestBody

AnalysisKind = Literal["recurring_features", "consensus_circuit", "circuit_difference", "cluster_prompts",
                       "attribution_shares", "virtual_weights", "local_circuit"]


class AnalysisRequest(RequestBody):
    kind: AnalysisKind
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="recurring_features / consensus_circuit / cluster_prompts: graph_ids or corpus_id (+ prompt_ids), "
                    "min_influence, and min_graphs | min_fraction | threshold; circuit_difference: graph_a, graph_b; "
                    "attribution_shares: graph_ids or corpus_id (+ prompt_ids), target (index), top_features, "
                    "corpus_features; "
                    "virtual_weights: dictionary_set_id, corpus_id, top_k, max_tokens; local_circuit: graph_id, node_id, prune.",
        examples=[{"corpus_id": "ioi-demo", "min_fraction": 0.8}],
    )


class AnalysisOut(BaseModel):
    analysis_id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    params: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float | None = None
    finished_at: float | None = None
