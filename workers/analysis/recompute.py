"""Recomputing a stored graph's prompt in a worker, for the analyses that need the model (QK pairs,
interventions): reload the graph's registered model and dictionary set (once per process), re-trace the stored
tokens with the stored BOS folding (so node ids are those of the stored graph), and rebuild the direct-effect
graph for the prompt's own targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from neo4j import Driver


def loaded_model(driver: Driver, model_id: str, dset_id: str, database: str | None):  # noqa: ANN201 - compute.Loaded
    from workers.pipeline import registry
    from workers.process import process_model_cache

    model = registry.get_model(driver, model_id, database)
    dset = registry.get_dictionary_set(driver, dset_id, database)
    return process_model_cache().get(model, dset)  # loaded on first use, shared with every task of the process


_GRAPH = """
MATCH (g:Graph {graph_id: $g}) WHERE g.status = 'complete'
OPTIONAL MATCH (p:Prompt {prompt_id: g.prompt_id})
RETURN g.model AS model, g.dictionary_set AS dset, g.provenance AS provenance, g.settings AS settings,
       p.tokens AS tokens, p.targets AS targets
"""


def targets_of(row: dict) -> list[str]:
    """The stored graph's own targets: a local circuit's feature, the prompt's submitted targets, else top."""
    settings = json.loads(row["settings"] or "{}")
    local = settings.get("local_circuit_of") if isinstance(settings, dict) else None
    if local:
        return [local["node_id"]]
    submitted = json.loads(row["targets"]) if row["targets"] else []
    return [t for t in submitted if isinstance(t, str)] or ["top"]


@dataclass
class Recomputed:
    loaded: Any  # workers.pipeline.compute.Loaded
    trace: Any  # workers.engine.linearise.Trace
    targets: list  # workers.engine.targets.Target
    graph: Any  # workers.engine.graph.Graph (unpruned)
    provenance: dict
    tokens: list[int]


def recompute_graph(driver: Driver, graph_id: str, *, database: str | None = None) -> Recomputed:
    """The stored graph's prompt, re-traced and attributed again (module docstring). LookupError for an unknown
    or incomplete graph, ValueError when it records no tokens."""
    import torch

    from workers.engine.attribution import AttributionSettings, build_graph
    from workers.engine.targets import parse_target

    rows, _, _ = driver.execute_query(_GRAPH, g=graph_id, database_=database)
    if not rows:
        raise LookupError(f"no complete graph {graph_id!r}")
    row = dict(rows[0])
    prov = json.loads(row["provenance"] or "{}")
    tokens = row["tokens"] or prov.get("tokens")
    if not tokens:
        raise ValueError(f"graph {graph_id!r} records no prompt tokens; cannot recompute it")
    loaded = loaded_model(driver, row["model"], row["dset"], database)
    lin = loaded.lin
    torch.set_num_threads(1)  # workers share the machine's cores; one thread per job
    trace = lin.trace(torch.tensor(list(tokens), dtype=torch.long), fold_first=bool(prov.get("bos_folded")))
    targets = []
    for spec in targets_of(row):
        targets += parse_target(spec, lin, trace, loaded.tokenizer)
    graph = build_graph(lin, trace, targets, AttributionSettings())
    return Recomputed(loaded, trace, targets, graph, prov, list(tokens))
