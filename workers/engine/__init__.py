"""The attribution engine: exact linear computation graphs of Hugging Face causal LMs with dictionaries
spliced in (DESIGN.md §2). A plain library: no service, database or network. See README.md here.

    lin = Linearised(model, dictionary_set)
    graph = attribute(lin, "prompt", ["top"], tokenizer=tok)
"""

from workers.engine.attribution import AttributionSettings, attribute, build_graph
from workers.engine.graph import Graph
from workers.engine.hierarchical import HierarchicalResult, hierarchical
from workers.engine.linearise import Linearised, Trace
from workers.engine.pruning import PruneResult, prune
from workers.engine.qk import QKAttribution, circuit_heads, qk_attribution
from workers.engine.targets import Target

__all__ = [
    "AttributionSettings",
    "Graph",
    "HierarchicalResult",
    "Linearised",
    "PruneResult",
    "QKAttribution",
    "Target",
    "Trace",
    "attribute",
    "build_graph",
    "circuit_heads",
    "hierarchical",
    "prune",
    "qk_attribution",
]
