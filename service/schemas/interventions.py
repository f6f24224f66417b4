"""Request of ``POST /graphs/{id}/interventions`` and the shape of its result (``GET /analyses/{id}``.result)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.request import RequestBody


class InterventionRequest(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"node_ids": ["feat:L1.mlp:p7:f12"], "mode": "ablate"},
        {"node_ids": ["feat:L0.mlp:p3:f5", "feat:L1.mlp:p7:f12"], "mode": "scale", "value": 2.0}]})

    node_ids: list[str] = Field(min_length=1, max_length=256, description="Feature nodes of the graph (a "
                                "supernode: all its members), edited together.")
    mode: Literal["ablate", "scale", "set"] = Field("ablate", description="ablate: activation 0; scale: value × "
                                                                          "the clean activation; set: value.")
    value: float | None = Field(None, description="The factor (scale) or activation (set).")
    top_k: int = Field(10, ge=1, le=200, description="Live top-logit changes listed.")


class InterventionEditOut(BaseModel):
    node_id: str
    clean_activation: float
    new_activation: float


class InterventionTargetOut(BaseModel):
    node_id: str
    label: str
    clean: float = Field(description="The target's clean value.")
    frozen_change: float = Field(description="Change with every other feature, pattern and norm frozen.")
    from_edges: float = Field(description="Σ (new/clean − 1) · edge(feature → target): equals frozen_change.")
    live_change: float | None = Field(description="Change in the live model (features recomputed); null for "
                                                  "targets not read at the unembedding.")


class LogitChangeOut(BaseModel):
    token_id: int
    token: str | None
    before: float
    after: float
    change: float


class InterventionResultOut(BaseModel):
    graph_id: str
    mode: str
    value: float | None
    edits: list[InterventionEditOut]
    targets: list[InterventionTargetOut]
    position: int = Field(description="Position of the live logits compared (the targets').")
    top_logit_changes: list[LogitChangeOut] = Field(description="Largest |live logit change| first.")
