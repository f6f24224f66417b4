"""Cross-layer transcoder graphs in the store (issue 19): one feature key per CLT feature whatever layers it
writes to, stored rows complete, corpus aggregates equal to the brute-force sum of the stored edges (a CLT
feature's edges to later layers' features included), the feature page, and the circuit query's Neuronpedia
export drawing every CLT feature at its source layer with the ``cross layer transcoder`` type. Real Neo4j."""

from __future__ import annotations

from service.query import circuits as q
from service.query.features import feature_page
from tests.engine.conftest import PROMPTS, calibrate, make_clt_dicts, make_gpt2
from tests.store.graphs import aggregates, assert_aggregates_equal, expected_aggregates
from workers.engine.attribution import attribute
from workers.engine.linearise import Linearised
from workers.engine.pruning import prune
from workers.store.aggregates import fold_corpus
from workers.store.from_engine import graph_to_record


def test_clt_graphs_are_stored_with_one_key_per_feature_and_aggregated(neo4j_driver, settings, store, unique_id):
    db = settings.neo4j_database
    model = make_gpt2(3, 64)
    lin = Linearised(model, make_clt_dicts(3, 64))
    calibrate(lin, PROMPTS[0])
    dset, corpus = f"{unique_id}-d", f"{unique_id}-c"
    recs, graphs = [], []
    for i, ids in enumerate(PROMPTS[:2]):
        g = attribute(lin, ids)
        g.influence = prune(g).influence
        graphs.append(g)
        recs.append(graph_to_record(g, graph_id=f"{unique_id}-g{i}", prompt_id=f"{unique_id}-p{i}", corpus_id=corpus,
                                    model="m", dictionary_set=dset))
    store(recs)
    fold_corpus(neo4j_driver, corpus, database=db)

    # one :Feature per CLT feature (source layer, index), shared by both prompts' instances
    want = {f"{dset}/L{int(g.layer[i])}.mlp#{int(g.feature[i])}" for g in graphs for i, k in enumerate(g.kinds)
            if k == "feat" and g.site[i] == "mlp"}
    got = {r["k"] for r in neo4j_driver.execute_query(
        "MATCH (f:Feature) WHERE f.dictionary_set = $d AND f.dictionary ENDS WITH '.mlp' RETURN f.fkey AS k",
        d=dset, database_=db).records}
    assert got == want and len(want) > 20

    # stored rows sum to their values; aggregates are the brute-force sums, cross-layer pairs among them
    for rec, g in zip(recs, graphs, strict=True):
        rows = neo4j_driver.execute_query(
            "MATCH (s:Node)-[e:ATTR]->(t:Node {graph_id: $g}) WHERE t.kind IN ['logit', 'feature'] "
            "RETURN t.node_id AS t, sum(e.w) AS total", g=rec.graph_id, database_=db).records
        for r in rows:
            v = float(g.value[g.index(r["t"])])
            assert abs(r["total"] - v) < 2e-5 * max(1.0, abs(v)), r["t"]
    agg = aggregates(neo4j_driver, corpus)
    assert_aggregates_equal(agg, expected_aggregates(*recs))
    assert any(s.split("/L")[1].startswith("0.mlp") and d.split("/L")[1].startswith("2.mlp") for s, d in agg)

    # the feature page of a layer-0 CLT feature that feeds a layer-2 one
    fkey = next(s for s, d in agg if s.split("/L")[1].startswith("0.mlp") and d.split("/L")[1].startswith("2.mlp"))
    page = feature_page(neo4j_driver, fkey, corpus, database=db)
    assert page["feature"]["fkey"] == fkey and page["top_activations"]
    assert any(n["fkey"] for n in page["downstream"])

    # the circuit query's Neuronpedia export: each CLT feature once, at its source layer
    c = q.circuit(neo4j_driver, recs[0].graph_id, q.Pruning(max_nodes=10_000, max_edges=1_000_000), database=db)
    np_json = q.to_neuronpedia(c)
    feats = [n for n in np_json["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert len(feats) == sum(1 for n in recs[0].nodes if n.kind == "feature")
    for n in feats:
        assert n["layer"] == n["node_id"].split(":L")[1].split(".")[0]
