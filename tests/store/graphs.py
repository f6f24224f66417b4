"""Helpers of the store tests: generated graph records and what the real server holds for them."""

from __future__ import annotations

import random

import pytest

from workers.store.records import GraphRecord, NodeRow


def random_record(graph_id: str, corpus_id: str, dset: str, seed: int, n_feat: int = 40, n_edges: int = 400) -> GraphRecord:
    """A graph with embeddings, errors, features drawn from a small pool (so graphs share features and
    aggregate pairs repeat), a logit, and random edges."""
    rng = random.Random(seed)
    nodes = [NodeRow(f"emb:p{p}", "embedding", -1, p, token=f"tok{p}") for p in range(4)]
    nodes += [NodeRow(f"err:L0.mlp:p{p}", "error", 0, p) for p in range(4)]
    for _ in range(n_feat):
        f, p, layer = rng.randrange(12), rng.randrange(4), rng.randrange(2)
        nid = f"feat:L{layer}.mlp:p{p}:f{f}"
        if all(n.node_id != nid for n in nodes):
            nodes.append(NodeRow(nid, "feature", layer, p, feature=f, dictionary=f"L{layer}.mlp",
                                 activation=rng.random(), influence=rng.random()))
    nodes.append(NodeRow("logit:p3:t7", "logit", 2, 3))
    ids = [n.node_id for n in nodes]
    pairs = {(rng.choice(ids[:-1]), rng.choice(ids[8:])) for _ in range(n_edges)}
    pairs = sorted((s, d) for s, d in pairs if s != d)
    return GraphRecord(graph_id=graph_id, prompt_id=f"{graph_id}-p", corpus_id=corpus_id, dictionary_set=dset,
                       model="m", nodes=nodes, edge_src=[s for s, _ in pairs], edge_dst=[d for _, d in pairs],
                       edge_w=[rng.uniform(-1, 1) for _ in pairs], metrics={"replacement": 0.5})


def stored(driver, graph_id: str) -> dict:
    with driver.session() as s:
        g = s.run("MATCH (g:Graph {graph_id: $g}) RETURN g.status AS status, count(*) AS c", g=graph_id).data()
        nodes = s.run("MATCH (n:Node {graph_id: $g}) RETURN count(n) AS c, count(DISTINCT n.uid) AS u", g=graph_id).single()
        edges = s.run("MATCH (a:Node {graph_id: $g})-[r:ATTR]->(b) RETURN a.node_id AS s, b.node_id AS d, r.w AS w",
                      g=graph_id).data()
    return {"graphs": g, "n_nodes": nodes["c"], "n_uids": nodes["u"], "edges": edges}


def aggregates(driver, corpus_id: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    with driver.session() as s:
        rows = s.run("MATCH (a:Feature)-[e:AGG {corpus: $c}]->(b:Feature) RETURN a.fkey AS s, b.fkey AS d, "
                     "e.sum_w AS w, e.sum_abs_w AS aw, e.n AS n", c=corpus_id).data()
    return {(r["s"], r["d"]): (r["w"], r["aw"], r["n"]) for r in rows}


def expected_aggregates(*recs: GraphRecord) -> dict[tuple[str, str], tuple[float, float, int]]:
    """Brute-force reference: every feature -> feature edge of the records, summed per (source, target) key."""
    out: dict[tuple[str, str], list] = {}
    for rec in recs:
        fkey = {n.node_id: n.fkey(rec.dictionary_set) for n in rec.nodes}
        for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True):
            if fkey[s] is None or fkey[d] is None:
                continue
            row = out.setdefault((fkey[s], fkey[d]), [0.0, 0.0, 0])
            row[0] += w
            row[1] += abs(w)
            row[2] += 1
    return {k: tuple(v) for k, v in out.items()}


def occurrences(driver, corpus_id: str) -> dict[str, tuple[int, float, int]]:
    with driver.session() as s:
        rows = s.run("MATCH (f:Feature)-[o:OCCURS {corpus: $c}]->(:Corpus {corpus_id: $c}) "
                     "RETURN f.fkey AS k, o.n AS n, o.sum_act AS act, o.n_graphs AS g", c=corpus_id).data()
    return {r["k"]: (r["n"], r["act"], r["g"]) for r in rows}


def expected_occurrences(*recs: GraphRecord) -> dict[str, tuple[int, float, int]]:
    out: dict[str, list] = {}
    for rec in recs:
        seen = set()
        for n in rec.nodes:
            k = n.fkey(rec.dictionary_set)
            if k is not None:
                row = out.setdefault(k, [0, 0.0, 0])
                row[0] += 1
                row[1] += n.activation or 0.0
                row[2] += k not in seen
                seen.add(k)
    return {k: tuple(v) for k, v in out.items()}


def assert_occurrences_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert (got[k][0], got[k][2]) == (want[k][0], want[k][2])
        assert got[k][1] == pytest.approx(want[k][1], abs=1e-9)


def assert_aggregates_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == pytest.approx(want[k][0], abs=1e-9)
        assert got[k][1] == pytest.approx(want[k][1], abs=1e-9)
        assert got[k][2] == want[k][2]


def assert_one_complete_copy(driver, rec: GraphRecord) -> None:
    st = stored(driver, rec.graph_id)
    assert st["graphs"] == [{"status": "complete", "c": 1}]
    assert st["n_nodes"] == st["n_uids"] == len(rec.nodes)
    got = sorted((e["s"], e["d"], e["w"]) for e in st["edges"])
    want = sorted(zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True))
    assert got == want
