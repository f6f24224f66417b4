"""A new local circuit for any feature node of a stored graph, computed by a worker.

The stored graph names its prompt, registered model and dictionary set; the worker reloads them (the
pipeline's per-process model cache), runs the engine with the feature's pre-activation as the only target
(``workers.engine.attribution.attribute(..., ["feat:L2.mlp:p5:f123"])``) and stores the result as a new
graph ``<graph_id>~<node_id>`` in its own corpus ``local:<corpus_id>``, so that the source corpus'
aggregates are not counted twice. Unpruned by default: the engine's direct effects are exact, and a reader
prunes at read time (service/query/circuits.py).
"""

from __future__ import annotations

import json

from neo4j import Driver

from workers.process import process_model_cache
from workers.vocabulary import ids


def local_graph_id(graph_id: str, node_id: str) -> str:
    return f"{graph_id}~{node_id}"


def compute_local_circuit(driver: Driver, graph_id: str, node_id: str, *, prune: bool = False,
                          database: str | None = None) -> dict:
    from workers.engine.attribution import AttributionSettings, attribute
    from workers.engine.pruning import prune as prune_graph
    from workers.pipeline import registry
    from workers.store.from_engine import graph_to_record
    from workers.store.writer import write_graph

    pid = ids.parse(node_id)
    if pid.kind != "feat":
        raise ValueError(f"{node_id!r} is not a feature node id (feat:L<layer>.<site>:p<pos>:f<index>); local "
                         "circuits explain a feature's pre-activation")
    rows, _, _ = driver.execute_query(
        "MATCH (g:Graph {graph_id: $g}) WHERE g.status = 'complete' "
        "OPTIONAL MATCH (p:Prompt {prompt_id: g.prompt_id}) "
        "RETURN g.prompt_id AS prompt_id, g.corpus_id AS corpus_id, g.model AS model, "
        "g.dictionary_set AS dset, g.provenance AS provenance, p.tokens AS tokens", g=graph_id, database_=database)
    if not rows:
        raise LookupError(f"no complete graph {graph_id!r}")
    r = rows[0]
    tokens = r["tokens"] or json.loads(r["provenance"] or "{}").get("tokens")
    if not tokens:
        raise ValueError(f"graph {graph_id!r} records no prompt tokens; cannot recompute it")
    model = registry.get_model(driver, r["model"], database)
    dset = registry.get_dictionary_set(driver, r["dset"], database)
    loaded = process_model_cache().get(model, dset)  # loaded on first use, shared with every task of the process
    g = attribute(loaded.lin, list(tokens), [node_id], tokenizer=loaded.tokenizer, settings=AttributionSettings())
    pr = prune_graph(g) if prune else None  # the default thresholds (workers/vocabulary/defaults.py)
    new_id = local_graph_id(graph_id, node_id)
    rec = graph_to_record(g, graph_id=new_id, prompt_id=r["prompt_id"], corpus_id=f"local:{r['corpus_id']}",
                          model=r["model"], dictionary_set=r["dset"], pruned=pr,
                          settings={"local_circuit_of": {"graph_id": graph_id, "node_id": node_id}, "prune": prune})
    res = write_graph(driver, rec, database=database)
    return {"graph_id": new_id, "source_graph_id": graph_id, "node_id": node_id, "n_nodes": len(rec.nodes),
            "n_edges": len(rec.edge_w), "written": res.written}
