"""A new local circuit of a stored graph's feature, computed by the worker code from the registered model:
its direct edges into the feature equal the stored end-to-end graph's edges into that feature node (the
engine's direct effects do not depend on which targets were asked for)."""

from __future__ import annotations

import json

import pytest

from tests.pipeline.conftest import build_tiny_model


def test_local_circuit_edges_equal_the_stored_graphs_edges_into_the_feature(neo4j_driver, settings, unique_id,
                                                                             tmp_path, store):
    from workers.analysis.local_circuits import compute_local_circuit
    from workers.engine.attribution import attribute
    from workers.pipeline import registry
    from workers.pipeline.compute import ModelCache
    from workers.store.from_engine import graph_to_record
    from workers.store.writer import delete_graph

    db = settings.neo4j_database
    model_dir, dict_dir = build_tiny_model(tmp_path, seed=1)
    model = registry.register_model(neo4j_driver, f"{unique_id}-m", model_dir, db)
    dset = registry.register_dictionary_set(neo4j_driver, f"{unique_id}-d", dict_dir, model.model_id, db)
    loaded = ModelCache().get(model, dset)
    tokens = loaded.tokenizer("the cat sat on the mat")["input_ids"]
    g = attribute(loaded.lin, tokens, None, tokenizer=loaded.tokenizer)
    rec = graph_to_record(g, graph_id=f"{unique_id}-g", prompt_id=f"{unique_id}-p", corpus_id=f"{unique_id}-c",
                          model=model.model_id, dictionary_set=dset.dictionary_set_id)
    store([rec])
    into: dict[str, dict[str, float]] = {}
    for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True):
        into.setdefault(d, {})[s] = w
    feat = max((n for n in rec.nodes if n.kind == "feature" and n.layer == 1 and n.node_id in into),
               key=lambda n: (len(into[n.node_id]), n.node_id)).node_id

    result = compute_local_circuit(neo4j_driver, rec.graph_id, feat, database=db)
    try:
        assert result["graph_id"] == f"{rec.graph_id}~{feat}" and result["written"]
        target = neo4j_driver.execute_query("MATCH (g:Graph {graph_id: $g}) RETURN g.target AS t",
                                            g=result["graph_id"], database_=db).records[0]["t"]
        assert [t["node_id"] for t in json.loads(target)["targets"]] == [feat]
        rows = neo4j_driver.execute_query(
            "MATCH (a:Node)-[r:ATTR]->(t:Node {uid: $uid}) RETURN a.node_id AS s, r.w AS w",
            uid=f"{result['graph_id']}|{feat}", database_=db).records
        local = {r["s"]: r["w"] for r in rows}
        shared = local.keys() & into[feat].keys()
        assert len(shared) >= max(1, len(into[feat]) // 2)
        for s in shared:
            assert local[s] == pytest.approx(into[feat][s], rel=1e-4, abs=1e-6), s
        with pytest.raises(ValueError, match="not a feature node"):
            compute_local_circuit(neo4j_driver, rec.graph_id, "emb:p0", database=db)
        # One model cache per process: the recomputing analyses (QK pairs, interventions) find the model the local
        # circuit loaded, without loading it again.
        from workers.analysis.recompute import loaded_model
        from workers.process import process_model_cache

        cache = process_model_cache()
        loads = cache.loads
        assert loaded_model(neo4j_driver, model.model_id, dset.dictionary_set_id, db) is cache.get(model, dset)
        assert cache.loads == loads >= 1
    finally:
        delete_graph(neo4j_driver, result["graph_id"], database=db)
