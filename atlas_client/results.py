"""`Circuit`: a stored graph's circuit as the API returns it, convertible to networkx and pandas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

if TYPE_CHECKING:
    import networkx as nx


@dataclass
class Circuit:
    """``nodes`` and ``edges`` are GET /graphs/{id}/circuit's (``edges``: source, target, signed weight = the
    direct effect of source on target); ``graph`` is the Graph node (model, target, metrics, provenance)."""

    graph: dict[str, Any]
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    pruning: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, payload: dict[str, Any]) -> Circuit:
        return cls(graph=payload["graph"], nodes=payload["nodes"], edges=payload["edges"],
                   pruning=payload.get("pruning", {}), stats=payload.get("stats", {}))

    @property
    def graph_id(self) -> str:
        return self.graph["graph_id"]

    def __repr__(self) -> str:
        return f"Circuit({self.graph_id!r}, {len(self.nodes)} nodes, {len(self.edges)} edges)"

    def to_networkx(self) -> nx.DiGraph:
        """A DiGraph: nodes keyed by node id with every node field as attributes, edges source -> target with
        ``weight``; ``G.graph`` holds the Graph node's properties."""
        import networkx as nx

        g = nx.DiGraph(**self.graph)
        for n in self.nodes:
            g.add_node(n["node_id"], **n)
        g.add_edges_from((e["source"], e["target"], {"weight": e["weight"]}) for e in self.edges)
        return g

    def to_dataframe(self, what: Literal["edges", "nodes"] = "edges") -> pd.DataFrame:
        """``edges``: one row per edge (source, target, weight, and each end's kind, fkey and label);
        ``nodes``: one row per node with its fields."""
        nodes = pd.DataFrame(self.nodes)
        if what == "nodes":
            return nodes
        edges = pd.DataFrame(self.edges, columns=["source", "target", "weight"])
        if nodes.empty:
            return edges
        ends = nodes.set_index("node_id")[[c for c in ("kind", "fkey", "label") if c in nodes.columns]]
        for end in ("source", "target"):
            edges = edges.join(ends.add_prefix(f"{end}_"), on=end)
        return edges
