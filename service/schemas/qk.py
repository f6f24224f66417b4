"""Request of ``POST /graphs/{id}/qk`` and the shape of its analysis result (``GET /analyses/{id}``.result)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.request import RequestBody


class QKRequest(RequestBody):
    """Either one head at one (query, key) position pair, or ``from_circuit`` for the heads that carry the
    graph's strongest cross-position edges (each at the position pair of its strongest credited edge)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"layer": 1, "head": 0, "query_position": 7, "key_position": 3, "top_k": 20},
        {"from_circuit": True, "top_k_heads": 3, "top_k": 20}]})

    layer: int | None = Field(None, ge=0, le=1024, description="Attention layer (0-based).")
    head: int | None = Field(None, ge=0, le=4096, description="Query head (grouped-query models map it to its "
                                                              "key head).")
    query_position: int | None = Field(None, ge=0, le=1_000_000)
    key_position: int | None = Field(None, ge=0, le=1_000_000, description="At most query_position (causal).")
    top_k: int = Field(20, ge=1, le=500, description="Pairs (and query-/key-side nodes) listed per head.")
    from_circuit: bool = Field(False, description="Choose the heads from the graph's strongest OV edges "
                                                  "instead of giving one.")
    top_k_heads: int = Field(3, ge=1, le=32, description="With from_circuit: how many heads.")


class QKPairOut(BaseModel):
    query_node: str = Field(examples=["feat:L0.mlp:p7:f12"])
    key_node: str = Field(examples=["emb:p3"])
    contribution: float = Field(description="scaling · Q_query_node · K_key_node")
    query_in_graph: bool = Field(description="The node is in the stored (pruned) graph.")
    key_in_graph: bool


class QKNodeOut(BaseModel):
    node_id: str
    contribution: float = Field(description="The node's pairs with the whole other side, bias included.")
    in_graph: bool


class QKBiasTermsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    q_bias_k_nodes: float = Field(alias="q_bias·k_nodes")
    q_nodes_k_bias: float = Field(alias="q_nodes·k_bias")
    q_bias_k_bias: float = Field(alias="q_bias·k_bias")


class QKHeadOut(BaseModel):
    layer: int
    head: int
    query_position: int
    key_position: int
    score: float = Field(description="The clean run's pre-softmax score scaling · q·k.")
    scaling: float
    attention: float = Field(description="The clean run's attention probability at (query, key).")
    credit: float | None = Field(description="from_circuit: Σ |w| · attention over the strong edges it carries.")
    pairs: list[QKPairOut] = Field(description="The top_k pairs by |contribution|.")
    n_pairs: int
    other_pairs: float = Field(description="Σ of the pairs not listed.")
    bias_terms: QKBiasTermsOut
    total: float = Field(description="Σ pairs + other_pairs + Σ bias_terms; equals score (the exact identity).")
    query_nodes: list[QKNodeOut]
    key_nodes: list[QKNodeOut]


class QKResultOut(BaseModel):
    graph_id: str
    from_circuit: bool
    n_positions: int
    n_layers: int
    n_heads: int
    token_strings: list[str] | None
    heads: list[QKHeadOut]
