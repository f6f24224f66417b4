"""Circuits with read-time pruning and strongest paths vs brute-force references on generated graphs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.query import circuits as q
from service.query.paths import graph_paths
from tests.query.graphs import graph_specs, make_records, ref_circuit, ref_paths

H = hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@H
@given(specs=graph_specs(1), data=st.data())
def test_circuit_matches_brute_force(neo4j_driver, settings, store, specs, data):
    (rec,) = store(make_records(specs))
    node_ids = [n.node_id for n in rec.nodes]
    pruning = q.Pruning(
        node_threshold=data.draw(st.sampled_from([0.0, 0.125, 0.25, 1.0])),
        edge_threshold=data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 5.0])),
        max_nodes=data.draw(st.integers(0, 8)), max_edges=data.draw(st.integers(0, 20)),
        keep_kinds=data.draw(st.sampled_from([("logit", "target", "embedding"), ("logit",), ()])),
        target=data.draw(st.one_of(st.none(), st.sampled_from(node_ids))),
    )
    c = q.circuit(neo4j_driver, rec.graph_id, pruning, database=settings.neo4j_database)
    want_nodes, want_edges = ref_circuit(rec, pruning.node_threshold, pruning.edge_threshold, pruning.max_nodes,
                                         pruning.max_edges, pruning.keep_kinds, pruning.target)
    assert {n["node_id"] for n in c.nodes} == want_nodes
    assert [(e["source"], e["target"], e["weight"]) for e in c.edges] == want_edges
    by_id = {n.node_id: n for n in rec.nodes}
    for n in c.nodes:  # stored properties come back unchanged
        assert n["activation"] == by_id[n["node_id"]].activation and n["influence"] == by_id[n["node_id"]].influence

    npj = q.to_neuronpedia(c)
    assert {n["node_id"] for n in npj["nodes"]} == want_nodes
    assert [(lk["source"], lk["target"], lk["weight"]) for lk in npj["links"]] == want_edges
    assert npj["metadata"]["schema_version"] == 1


def test_unknown_graph_and_target_raise(neo4j_driver, settings, store):
    with pytest.raises(q.GraphNotFound):
        q.circuit(neo4j_driver, "no-such-graph", database=settings.neo4j_database)
    (rec,) = store(make_records([([n for n in _tiny_nodes()], [], [])]))
    with pytest.raises(q.NodeNotFound):
        q.circuit(neo4j_driver, rec.graph_id, q.Pruning(target="feat:L9.mlp:p0:f0"), database=settings.neo4j_database)
    empty = q.circuit(neo4j_driver, rec.graph_id, q.Pruning(max_nodes=0, keep_kinds=()),
                      database=settings.neo4j_database)
    assert empty.nodes == [] and empty.edges == []


def _tiny_nodes():  # noqa: ANN202
    from workers.store.records import NodeRow

    return [NodeRow("emb:p0", "embedding", 0, 0, token="a"), NodeRow("logit:p0:t1", "logit", 2, 0)]


@H
@given(specs=graph_specs(1), data=st.data())
def test_graph_paths_match_brute_force(neo4j_driver, settings, store, specs, data):
    (rec,) = store(make_records(specs))
    ids = [n.node_id for n in rec.nodes]
    source, target = data.draw(st.sampled_from(ids)), data.draw(st.sampled_from(ids))
    max_hops, k = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    if source == target:
        return
    got = graph_paths(neo4j_driver, rec.graph_id, source, target, max_hops=max_hops, beam=10_000, k=k, fanout=1000,
                      database=settings.neo4j_database)
    edges = list(zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True))
    want = ref_paths(edges, source, target, max_hops, k)
    assert [(p.nodes, p.weights, p.product) for p in got] == want


def test_beam_search_keeps_only_the_strongest_partial_paths():
    from service.query.paths import beam_search

    # a->b (0.9) ->t (0.1) and a->c (0.5) ->t (1.0): beam 1 keeps only a->b after hop 1 and misses the best path.
    edges = {"a": [("b", 0.9), ("c", 0.5)], "b": [("t", 0.1)], "c": [("t", 1.0)]}
    exhaustive = beam_search("a", "t", lambda f: {n: edges.get(n, []) for n in f}, max_hops=2, beam=10, k=2)
    assert [p.nodes for p in exhaustive] == [("a", "c", "t"), ("a", "b", "t")]
    narrow = beam_search("a", "t", lambda f: {n: edges.get(n, []) for n in f}, max_hops=2, beam=1, k=2)
    assert [p.nodes for p in narrow] == [("a", "b", "t")]
    with pytest.raises(ValueError, match="max_hops"):
        beam_search("a", "t", lambda f: {}, max_hops=0, beam=1, k=1)


def test_ties_at_the_top_k_boundary_break_by_node_id(neo4j_driver, settings, store):
    from workers.store.records import NodeRow

    nodes = [NodeRow(f"feat:L0.mlp:p0:f{i}", "feature", 0, 0, feature=i, dictionary="L0.mlp", activation=1.0,
                     influence=0.5) for i in (3, 1, 2)]
    nodes.append(NodeRow("logit:p0:t1", "logit", 2, 0))
    src = ["feat:L0.mlp:p0:f1", "feat:L0.mlp:p0:f2", "feat:L0.mlp:p0:f3"]
    (rec,) = store(make_records([(nodes, [(s, "logit:p0:t1") for s in src], [0.5, -0.5, 0.5])]))
    c = q.circuit(neo4j_driver, rec.graph_id, q.Pruning(max_nodes=2, keep_kinds=("logit",), max_edges=1),
                  database=settings.neo4j_database)
    assert [n["node_id"] for n in c.nodes] == ["feat:L0.mlp:p0:f1", "feat:L0.mlp:p0:f2", "logit:p0:t1"]
    assert [(e["source"], e["weight"]) for e in c.edges] == [("feat:L0.mlp:p0:f1", 0.5)]
