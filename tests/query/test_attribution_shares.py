"""The attribution_shares analysis (workers/analysis/attribution_shares.py) against a dense linear solve on
generated graphs written by the real writer: the amount of the target each node carries, per position, the bias
leaf, the best position and the features; with complete rows the leaves sum to the target's value."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.pipeline.checks import dense_attribution
from workers.analysis.attribution_shares import attribution_shares, graph_shares
from workers.store.records import GraphRecord, NodeRow

N_POS = 5


def layered_record(graph_id: str, corpus_id: str, seed: int, prune: bool = False) -> GraphRecord:
    """Embeddings, errors at layers 0-2, features at layers 0-2, a bias leaf and one logit target; edges only
    from lower to higher layers and never from a later position; every row complete (a feature's activation, the
    target's value, is the sum of its in-edges)."""
    rng = random.Random(seed)
    leaves = [NodeRow(f"emb:p{p}", "embedding", -1, p, activation=1.0, token=f"t{p}") for p in range(N_POS)]
    leaves += [NodeRow(f"err:L{la}.mlp:p{p}", "error", la, p, activation=1.0) for la in range(3) for p in range(N_POS)]
    leaves.append(NodeRow("bias:all", "bias", -1, None, activation=1.0))
    feats = []
    for la in range(3):
        for p in range(N_POS):
            for f in rng.sample(range(20), 2):
                feats.append(NodeRow(f"feat:L{la}.mlp:p{p}:f{f}", "feature", la, p, feature=f, dictionary=f"L{la}.mlp"))
    target = NodeRow(f"logit:p{N_POS - 1}:t9", "logit", 3, N_POS - 1)
    src, dst, w = [], [], []

    def feeds(s: NodeRow, t: NodeRow) -> bool:
        if s.kind == "bias":
            return True
        return (s.layer if s.layer is not None else -1) < t.layer and s.pos <= t.pos

    for t in [*feats, target]:
        total = 0.0
        for s in [*leaves, *feats]:
            if feeds(s, t) and rng.random() < 0.5:
                x = rng.uniform(-1, 1)
                src.append(s.node_id)
                dst.append(t.node_id)
                w.append(x)
                total += x
        if t.kind == "feature":
            t.activation = total if abs(total) > 0.05 else total + 0.5  # a row with a tiny value: no blow-up
            if t.activation != total:
                src.append("bias:all")
                dst.append(t.node_id)
                w.append(0.5)
        else:
            value = total
    return GraphRecord(graph_id=graph_id, prompt_id=f"{graph_id}-p", corpus_id=corpus_id, dictionary_set="d",
                       model="m", nodes=[*leaves, *feats, target], edge_src=src, edge_dst=dst, edge_w=w,
                       target={"targets": [{"node_id": target.node_id, "label": "logit t9", "value": value}]},
                       settings={"prune": prune})


def dense_reference(rec: GraphRecord) -> tuple[np.ndarray, list[NodeRow]]:
    """tests/pipeline/checks.dense_attribution on the record's nodes and edges, as an array in node order."""
    x = dense_attribution([{"node_id": n.node_id, "kind": n.kind, "activation": n.activation} for n in rec.nodes],
                          list(zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True)), rec.target["targets"][0])
    return np.array([x[n.node_id] for n in rec.nodes]), rec.nodes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shares_equal_a_dense_solve(neo4j_driver, settings, store, unique_id, seed):
    rec = store([layered_record(f"{unique_id}-g{seed}", unique_id, seed)])[0]
    got = graph_shares(neo4j_driver, rec.graph_id, top_features=1000, database=settings.neo4j_database)
    x, nodes = dense_reference(rec)
    value = rec.target["targets"][0]["value"]
    has_row = set(rec.edge_dst)
    positions: dict[int, float] = {}
    for i, nd in enumerate(nodes):
        if nd.node_id not in has_row and nd.kind != "bias":
            positions[nd.pos] = positions.get(nd.pos, 0.0) + x[i]
    got_pos = dict((p, s) for p, s in got["positions"])
    assert set(got_pos) == set(positions)
    for p, s in positions.items():
        assert got_pos[p] == pytest.approx(s, rel=1e-6, abs=1e-9)
    bias = x[[i for i, nd in enumerate(nodes) if nd.kind == "bias"][0]]
    assert got["bias"] == pytest.approx(bias, rel=1e-6, abs=1e-9)
    # complete rows: the leaves carry the whole value
    assert sum(got_pos.values()) + got["bias"] == pytest.approx(value, rel=1e-6, abs=1e-9)
    cands = {p: s for p, s in positions.items() if p != N_POS - 1 and s > 0}
    assert got["best"] == (max(cands, key=cands.__getitem__) if cands else -1)
    feats = {nd.node_id: x[i] for i, nd in enumerate(nodes) if nd.kind == "feature" and x[i] != 0}
    assert {f["node_id"]: f["attribution"] for f in got["features"]} == pytest.approx(feats, rel=1e-6, abs=1e-9)
    mags = [abs(f["attribution"]) for f in got["features"]]
    assert mags == sorted(mags, reverse=True)  # ranked by |attribution|
    assert got["complete"] is True and got["target"]["value"] == pytest.approx(value)


def test_corpus_sums_per_feature(neo4j_driver, settings, store, unique_id):
    recs = store([layered_record(f"{unique_id}-g{s}", unique_id, s) for s in range(3)])
    res = attribution_shares(neo4j_driver, [r.graph_id for r in recs], corpus_features=1000,
                             database=settings.neo4j_database)
    expected: dict[str, list[float]] = {}
    for rec in recs:
        x, nodes = dense_reference(rec)
        for i, nd in enumerate(nodes):
            if nd.kind == "feature" and x[i] != 0:
                row = expected.setdefault(nd.fkey(rec.dictionary_set), [0.0, 0.0, set()])
                row[0] += x[i]
                row[1] += abs(x[i])
                row[2].add(rec.graph_id)
    got = {f["fkey"]: f for f in res["features"]}
    assert set(got) == set(expected)
    for k, (s, a, gs) in expected.items():
        assert got[k]["sum"] == pytest.approx(s, rel=1e-6, abs=1e-9)
        assert got[k]["sum_abs"] == pytest.approx(a, rel=1e-6, abs=1e-9)
        assert got[k]["n_graphs"] == len(gs)
    assert [abs(f["sum"]) for f in res["features"]] == sorted((abs(f["sum"]) for f in res["features"]), reverse=True)
    assert res["n_graphs"] == 3 and [g["graph_id"] for g in res["graphs"]] == [r.graph_id for r in recs]


def test_unknown_graph_and_target(neo4j_driver, settings, store, unique_id):
    rec = store([layered_record(f"{unique_id}-g", unique_id, 0, prune=True)])[0]
    assert graph_shares(neo4j_driver, rec.graph_id, database=settings.neo4j_database)["complete"] is False
    with pytest.raises(LookupError):
        graph_shares(neo4j_driver, f"{unique_id}-nope", database=settings.neo4j_database)
    with pytest.raises(ValueError, match="target 1"):
        graph_shares(neo4j_driver, rec.graph_id, target=1, database=settings.neo4j_database)
