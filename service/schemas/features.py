"""Response shapes of the feature-page and global-circuit routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.query.labels import MAX_LABEL_CHARS, MAX_NOTE_CHARS
from service.schemas.circuits import PathOut
from service.schemas.pages import Page
from service.schemas.request import RequestBody


class ContextToken(BaseModel):
    pos: int
    token: str | None
    activation: float | None = Field(None, description="The feature's activation at this position of the same "
                                                       "graph; null where the stored graph has no instance.")


class ActivationOut(BaseModel):
    graph_id: str
    corpus_id: str | None
    prompt_id: str | None
    node_id: str
    pos: int | None
    activation: float | None
    influence: float | None
    context: list[ContextToken] = Field(description="Prompt tokens around the position (from the graph's "
                                                    "embedding nodes).")


class NeighbourOut(BaseModel):
    fkey: str = Field(examples=["zoo-dset/L0.mlp#3"])
    dictionary: str | None
    index: int | None
    sum_w: float = Field(description="Σ of signed direct effects over every instance pair in the corpus.")
    sum_abs_w: float
    n: int = Field(description="Number of instance-pair edges aggregated.")
    source_activation_mass: float | None = Field(description="Σ of the source feature's activations over all "
                                                             "its instances in the corpus (the normaliser).")
    norm_w: float | None = Field(description="sum_w / source_activation_mass.")


class FrequencyOut(BaseModel):
    corpus_id: str
    n_instances: int
    n_graphs: int
    corpus_graphs: int
    sum_activation: float
    graph_fraction: float | None


class FeatureInfo(BaseModel):
    fkey: str
    dictionary: str | None = None
    index: int | None = None
    dictionary_set: str | None = None
    label: str | None = None
    note: str | None = None
    label_by: str | None = Field(None, description="key_id of the API key that set the label.")
    label_at: float | None = Field(None, description="When the label was set (epoch seconds).")


class FeatureLabelIn(RequestBody):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS, examples=["IO name mover"],
                       description="A short name for what the feature does (surrounding spaces are dropped).")
    note: str = Field("", max_length=MAX_NOTE_CHARS, examples=["fires on the last token of IOI prompts"])

    @field_validator("label")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("label is blank: give a few words")
        return v.strip()


class FeatureLabelOut(BaseModel):
    fkey: str
    label: str
    note: str
    set_by: str = Field(description="key_id of the API key that set it.")
    set_at: float = Field(description="Epoch seconds.")


class HistogramOut(BaseModel):
    n_instances: int = Field(description="Stored instances (complete graphs, of the corpus if given).")
    n_tokens: int | None = Field(description="Token positions of the corpus' complete graphs (null without "
                                             "corpus_id).")
    density: float | None = Field(description="n_instances / n_tokens: how often the feature fires (is stored) "
                                              "per token.")
    min: float | None
    max: float | None
    mean: float | None
    bin_edges: list[float] = Field(description="bins + 1 edges, min to max (numpy.histogram).")
    counts: list[int]


class FeaturePageOut(BaseModel):
    feature: FeatureInfo
    corpus_id: str | None
    top_activations: list[ActivationOut]
    upstream: list[NeighbourOut]
    downstream: list[NeighbourOut]
    frequency: list[FrequencyOut]
    histogram: HistogramOut


class ActivationPageOut(Page[ActivationOut]):
    pass


class NeighbourPageOut(Page[NeighbourOut]):
    fkey: str
    corpus_id: str | None
    direction: str


class AggregateEdgeOut(BaseModel):
    sum_w: float
    sum_abs_w: float
    n: int
    source_activation_mass: float | None
    norm_w: float | None


class BetweenOut(BaseModel):
    source: str
    target: str
    corpus_id: str
    direct: AggregateEdgeOut | None
    paths: list[PathOut]


class TokenCountOut(BaseModel):
    token: str | None
    n: int = Field(description="Instances (among the feature's strongest) at a position with this token.")
    max_activation: float | None


class FeatureHitOut(BaseModel):
    fkey: str = Field(examples=["zoo-dset/L1.mlp#17"])
    dictionary_set: str | None = None
    dictionary: str | None = None
    layer: int | None = None
    site: str | None = None
    index: int | None = None
    label: str | None = None
    n_graphs: int = Field(description="Key search: graphs the feature appears in (corpus aggregates). Token "
                                      "search: graphs where it fires on the token.")
    n_instances: int
    activation: float = Field(description="Key search: mean activation over its instances. Token search: its "
                                          "largest activation on the token. The second ranking key.")
    top_tokens: list[TokenCountOut] = Field(description="Tokens its strongest instances fire on, most "
                                                        "frequent first.")


class FeatureSearchOut(BaseModel):
    query: dict[str, str | int] = Field(description="How q was read: mode 'key' (fkey_prefix, dictionary_set, "
                                                    "layer, site, index) or 'token' (token).",
                                        examples=[{"mode": "key", "layer": 2, "site": "mlp"}])
    items: list[FeatureHitOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= (with the same q and corpus_id) for the next "
                                                "page; null on the last page.")


class TokenEffectOut(BaseModel):
    token_id: int
    token: str | None = Field(description="The token's text (null when the model has no tokenizer).")
    effect: float = Field(description="Logit change per unit activation through the direct path, at a final-norm "
                                      "multiplier of 1 (workers/analysis/logit_effects.py).")


class LogitEffectsOut(BaseModel):
    fkey: str
    model_id: str
    dictionary_set: str
    promoted: list[TokenEffectOut] = Field(description="Largest effects first.")
    suppressed: list[TokenEffectOut] = Field(description="Most negative effects first.")
