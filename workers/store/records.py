"""What the writer stores for one attribution graph, as plain columns (no torch, no engine types).

The engine's ``Graph`` converts itself into a ``GraphRecord`` (``workers.store.from_engine``); the writer only
knows this shape, so the storage layer can be tested and benchmarked on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.vocabulary.ids import feature_key
from workers.vocabulary.kinds import NEO4J_LABEL


@dataclass
class NodeRow:
    node_id: str  # the engine's typed id, unique within the graph
    kind: str  # a store kind (workers/vocabulary/kinds.py)
    layer: int | None
    pos: int | None
    feature: int | None = None
    dictionary: str | None = None
    activation: float | None = None
    influence: float | None = None
    token: str | None = None

    def fkey(self, dictionary_set: str) -> str | None:
        if self.kind != "feature" or self.feature is None or self.dictionary is None:
            return None
        return feature_key(dictionary_set, self.dictionary, self.feature)


@dataclass
class GraphRecord:
    graph_id: str
    prompt_id: str
    corpus_id: str
    dictionary_set: str  # content hash (or registered id) of the dictionary set
    model: str
    nodes: list[NodeRow]
    # Edges as parallel columns: source node_id, target node_id, signed direct effect.
    edge_src: list[str]
    edge_dst: list[str]
    edge_w: list[float]
    target: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.edge_src) == len(self.edge_dst) == len(self.edge_w)):
            raise ValueError(
                f"edge columns differ in length: src {len(self.edge_src)}, dst {len(self.edge_dst)}, "
                f"w {len(self.edge_w)}"
            )
        unknown = {n.kind for n in self.nodes} - NEO4J_LABEL.keys()
        if unknown:
            raise ValueError(f"unknown node kinds {sorted(unknown)}; expected one of {sorted(NEO4J_LABEL)}")
