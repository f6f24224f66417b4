"""Graphs with unexpanded-features leaves (the engine's node budget, or the storage-time ``max_features`` cap)
are stored with their leaves, so the stored rows still sum to their values; read back through the circuit
query and its Neuronpedia export. Real Neo4j."""

from __future__ import annotations

import torch

from service.query import circuits as q
from tests.engine.conftest import PROMPTS, calibrate, make_dicts, make_gpt2
from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.linearise import Linearised
from workers.engine.pruning import prune
from workers.engine.targets import top_logits
from workers.store.from_engine import graph_to_record


def _graph(budget: int | None):
    model = make_gpt2(3, 64)
    lin = Linearised(model, make_dicts(model, 3, 64))
    calibrate(lin, PROMPTS[0])
    tr = lin.trace(PROMPTS[0])
    g = build_graph(lin, tr, top_logits(lin, tr), AttributionSettings(max_feature_nodes=budget, expand_batch=8))
    g.influence = prune(g).influence
    return g


def _row_sums(rec) -> dict[str, float]:
    sums: dict[str, float] = {}
    for d, w in zip(rec.edge_dst, rec.edge_w, strict=True):
        sums[d] = sums.get(d, 0.0) + w
    return sums


def test_max_features_folds_the_dropped_features_into_leaves():
    g = _graph(None)
    rec = graph_to_record(g, graph_id="g", prompt_id="p", corpus_id="c", model="m", dictionary_set="d",
                          max_features=25)
    kinds = [n.kind for n in rec.nodes]
    assert kinds.count("feature") == 25 and kinds.count("unexpanded") > 0
    assert all(n.activation == 1.0 and n.feature is None for n in rec.nodes if n.kind == "unexpanded")
    sums = _row_sums(rec)
    rows = {n.node_id for n in rec.nodes if n.kind in ("feature", "logit")}
    assert rows <= sums.keys()
    for nid in rows:  # every stored row still sums to its value (bias leaf included)
        v = float(g.value[g.index(nid)])
        assert abs(sums[nid] - v) < 2e-5 * max(1.0, abs(v)), nid
    # the kept features are the most influential ones
    feats = [i for i, k in enumerate(g.kinds) if k == "feat"]
    top = sorted(feats, key=lambda i: -float(g.influence[i]))[:25]
    assert {g.node_ids[i] for i in top} == {n.node_id for n in rec.nodes if n.kind == "feature"}


def test_budgeted_graph_is_stored_with_its_leaves_and_read_back(neo4j_driver, settings, store, unique_id):
    g = _graph(12)
    n_leaves = g.kinds.count("unexp")
    assert n_leaves > 0
    rec = graph_to_record(g, graph_id=f"{unique_id}-g", prompt_id=f"{unique_id}-p", corpus_id=f"{unique_id}-c",
                          model="m", dictionary_set=f"{unique_id}-d")
    store([rec])
    db = settings.neo4j_database
    n = neo4j_driver.execute_query("MATCH (n:Node:Unexp {graph_id: $g}) RETURN count(n) AS n", g=rec.graph_id,
                                   database_=db).records[0]["n"]
    assert n == n_leaves
    rows = neo4j_driver.execute_query(
        "MATCH (s:Node)-[e:ATTR]->(t:Node {graph_id: $g}) WHERE t.kind IN ['logit', 'feature'] "
        "RETURN t.node_id AS t, sum(e.w) AS total", g=rec.graph_id, database_=db).records
    assert len(rows) == 12 + len(g.targets)
    for r in rows:  # stored rows are complete: the leaves carry the unexpanded features' share
        v = float(g.value[g.index(r["t"])])
        assert abs(r["total"] - v) < 2e-5 * max(1.0, abs(v)), r["t"]
    c = q.circuit(neo4j_driver, rec.graph_id, q.Pruning(max_nodes=10_000, max_edges=100_000), database=db)
    leaves = [x for x in c.nodes if x["kind"] == "unexpanded"]
    assert len(leaves) == n_leaves
    np_json = q.to_neuronpedia(c)
    types = {x["node_id"]: x["feature_type"] for x in np_json["nodes"]}
    assert all(types[x["node_id"]] == "mlp reconstruction error" for x in leaves)
    assert torch.isnan(g.value[g.index(leaves[0]["node_id"])])
