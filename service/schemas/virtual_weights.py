"""Request and responses of the weight-level virtual weights (workers/analysis/virtual_weights.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.schemas.request import RequestBody


class VirtualWeightOut(BaseModel):
    fkey: str
    w: float


class VirtualWeightsRequest(RequestBody):
    dictionary_set_id: str = Field(examples=["zoo-dset"])
    corpus_id: str = Field(examples=["ioi-demo"],
                           description="A corpus of the dictionary set's model: the pre-MLP norm scale is held at its "
                                       "average over this corpus' tokens (DESIGN.md §2).")
    top_k: int = Field(16, ge=1, le=1024, description="Incoming virtual weights kept per transcoder feature.")
    max_tokens: int = Field(100_000, ge=1, le=10_000_000,
                            description="Average the norm scale over at most this many tokens (whole prompts).")


class NormScaleOut(BaseModel):
    sigma: float = Field(description="σ̄ = 1 / mean over the corpus' tokens of the frozen norm multiplier; "
                                     "virtual weights divide by it.")
    mean_multiplier: float
    min_sigma: float
    max_sigma: float
    n_tokens: int


class VirtualWeightsProvenanceOut(BaseModel):
    dictionary_set_id: str
    corpus_id: str | None = Field(None, description="The corpus the norm scales were measured on.")
    model_id: str | None = None
    n_edges: int
    top_k: int | None = None
    centred: bool | None = Field(None, description="Whether the norm centres (LayerNorm) or not (RMSNorm).")
    norm_scale: str | None = None
    norm_scales: dict[str, NormScaleOut] = Field(default_factory=dict, description="Per layer (its pre-MLP norm).")
    n_prompts: int | None = None
    max_tokens: int | None = None
    bos_excluded: bool | None = None
    computed_at: float | None = None
