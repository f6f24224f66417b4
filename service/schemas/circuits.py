"""Response shapes of the circuit, graph-list and path routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.schemas.pages import Page
from service.schemas.request import RequestBody


class NodeOut(BaseModel):
    node_id: str = Field(examples=["feat:L1.mlp:p4:f17"])
    kind: str = Field(examples=["feature"])
    layer: int | None = None
    pos: int | None = None
    feature: int | None = None
    dictionary: str | None = None
    fkey: str | None = Field(None, examples=["zoo-dset/L1.mlp#17"])
    activation: float | None = None
    influence: float | None = None
    token: str | None = None
    label: str | None = Field(None, description="The feature's label (PUT /features/{fkey}/label), if any.")


class EdgeOut(BaseModel):
    source: str = Field(examples=["emb:p3"])
    target: str = Field(examples=["feat:L1.mlp:p4:f17"])
    weight: float = Field(description="Signed direct effect of source on target.", examples=[0.42])


class PruningOut(BaseModel):
    node_threshold: float
    edge_threshold: float
    max_nodes: int
    max_edges: int
    keep_kinds: list[str]
    target: str | None


class CircuitOut(BaseModel):
    graph: dict[str, Any] = Field(description="The Graph node: ids, model, target, settings, metrics, provenance.")
    nodes: list[NodeOut]
    edges: list[EdgeOut]
    pruning: PruningOut
    stats: dict[str, Any]


class GraphSummaryOut(BaseModel):
    graph_id: str
    corpus_id: str | None
    prompt_id: str | None
    model: str | None
    n_nodes: int | None
    n_edges: int | None
    prompt_text: str | None = Field(None, description="The prompt (its Prompt node's text, else the graph's "
                                                      "provenance).", examples=["When Mary and John went to the store"])
    targets: list[str] = Field(default_factory=list, description="Labels of the graph's targets.",
                               examples=[["logit(Mary)"]])


class GraphPageOut(Page[GraphSummaryOut]):
    pass


class PathOut(BaseModel):
    nodes: list[str]
    weights: list[float]
    product: float = Field(description="Product of the edge weights along the path (ranked by |product|).")


class PathsOut(BaseModel):
    source: str
    target: str
    paths: list[PathOut]


class LocalCircuitRequest(RequestBody):
    node_id: str = Field(pattern=r"^feat:", examples=["feat:L1.mlp:p4:f17"],
                         description="A feature node id of the graph (it need not be active).")
    prune: bool = Field(False, description="Apply influence pruning before storing (default: keep everything).")
