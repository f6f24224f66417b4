"""Feature pages, corpus-aggregated neighbourhoods and feature paths vs brute-force references."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.query import features, global_circuits
from service.query.paths import feature_paths
from tests.query.graphs import graph_specs, make_records, ref_paths

H = hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


def corpus_reference(recs):  # noqa: ANN001, ANN201
    """(instances per fkey, AGG sums per pair, activation mass per fkey, graphs per fkey)."""
    inst, agg, mass, graphs = defaultdict(list), {}, defaultdict(float), defaultdict(set)
    for rec in recs:
        by_id = {n.node_id: n for n in rec.nodes}
        emb = {n.pos: n.token for n in rec.nodes if n.kind == "embedding"}
        for n in rec.nodes:
            fk = n.fkey(rec.dictionary_set)
            if fk:
                inst[fk].append((rec, n, emb))
                mass[fk] += n.activation
                graphs[fk].add(rec.graph_id)
        for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True):
            fs, fd = by_id[s].fkey(rec.dictionary_set), by_id[d].fkey(rec.dictionary_set)
            if fs and fd:
                a = agg.setdefault((fs, fd), [0.0, 0.0, 0])
                a[0] += w
                a[1] += abs(w)
                a[2] += 1
    return inst, agg, mass, graphs


def ref_neighbours(agg, mass, fkey, direction, rank_by):  # noqa: ANN001, ANN201
    rows = []
    for (s, t), (w, aw, n) in agg.items():
        if (t if direction == "upstream" else s) != fkey:
            continue
        other = s if direction == "upstream" else t
        m = mass[s]
        norm = w / m if m != 0 else None
        score = {"norm_w": abs(norm) if norm is not None else -1.0, "sum_abs_w": aw, "n": float(n)}[rank_by]
        rows.append((score, other, w, aw, n, m, norm))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


@H
@given(specs=graph_specs(3), data=st.data())
def test_feature_page_and_neighbours_match_brute_force(neo4j_driver, settings, store, specs, data):
    recs = store(make_records(specs))
    db = settings.neo4j_database
    corpus = recs[0].corpus_id
    inst, agg, mass, graphs = corpus_reference(recs)
    if not inst:
        assert global_circuits.aggregate_neighbours(neo4j_driver, f"{recs[0].dictionary_set}/L0.mlp#0", corpus,
                                                    database=db) == []
        return
    fkey = data.draw(st.sampled_from(sorted(inst)))
    before, after = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))
    limit = data.draw(st.integers(1, 6))

    # top activations, paginated in two pages
    want = sorted(inst[fkey], key=lambda t: (-t[1].activation, f"{t[0].graph_id}|{t[1].node_id}"))
    got = features.top_activations(neo4j_driver, fkey, corpus, limit=limit, before=before, after=after, database=db)
    got += features.top_activations(neo4j_driver, fkey, corpus, offset=limit, limit=100, before=before, after=after,
                                    database=db)
    assert [(g["graph_id"], g["node_id"], g["activation"]) for g in got] == \
        [(r.graph_id, n.node_id, n.activation) for r, n, _ in want]
    for g, (rec, n, emb) in zip(got, want, strict=True):
        here = {m.pos: m.activation for m in rec.nodes if m.fkey(rec.dictionary_set) == fkey}
        assert g["context"] == [{"pos": p, "token": emb[p], "activation": here.get(p)} for p in sorted(emb)
                                if n.pos - before <= p <= n.pos + after]
        assert g["context"][[c["pos"] for c in g["context"]].index(n.pos)]["activation"] == n.activation

    # aggregate neighbours, both directions and every ranking
    for direction in ("upstream", "downstream"):
        for rank_by in ("norm_w", "sum_abs_w", "n"):
            rows = global_circuits.aggregate_neighbours(neo4j_driver, fkey, corpus, direction, rank_by=rank_by,
                                                        limit=1000, database=db)
            assert [(r["fkey"], r["sum_w"], r["sum_abs_w"], r["n"], r["source_activation_mass"], r["norm_w"])
                    for r in rows] == ref_neighbours(agg, mass, fkey, direction, rank_by)
    # all corpora == this corpus (the features' dictionary set is unique to this example)
    assert global_circuits.aggregate_neighbours(neo4j_driver, fkey, None, "upstream", limit=1000, database=db) == \
        global_circuits.aggregate_neighbours(neo4j_driver, fkey, corpus, "upstream", limit=1000, database=db)

    # frequency and the whole page
    page = features.feature_page(neo4j_driver, fkey, corpus, top=3, database=db)
    (freq,) = page["frequency"]
    assert (freq["n_instances"], freq["n_graphs"], freq["corpus_graphs"]) == (len(inst[fkey]), len(graphs[fkey]), 3)
    assert freq["graph_fraction"] == len(graphs[fkey]) / 3
    assert page["feature"]["fkey"] == fkey and len(page["top_activations"]) == min(3, len(want))
    # histogram and density: numpy over the instances' activations; tokens = embedding nodes of the 3 graphs
    acts = [n.activation for _, n, _ in inst[fkey]]
    counts, edges = np.histogram(acts, bins=20)
    hist = page["histogram"]
    assert (hist["counts"], hist["bin_edges"]) == (counts.tolist(), edges.tolist()) and sum(hist["counts"]) == len(acts)
    n_tokens = sum(1 for r in recs for m in r.nodes if m.kind == "embedding")
    assert (hist["n_instances"], hist["n_tokens"], hist["density"]) == (len(acts), n_tokens, len(acts) / n_tokens)
    assert (hist["min"], hist["max"]) == (min(acts), max(acts))
    assert features.activation_histogram(neo4j_driver, fkey, None, database=db)["n_tokens"] is None

    # strongest feature paths over normalised aggregate edges
    target = data.draw(st.sampled_from(sorted(inst)))
    if target != fkey:
        edges = [(s, t, w / mass[s]) for (s, t), (w, _, _) in agg.items()]
        got_paths = feature_paths(neo4j_driver, corpus, fkey, target, max_hops=3, beam=10_000, k=5, fanout=1000,
                                  database=db)
        assert [(p.nodes, p.weights, p.product) for p in got_paths] == ref_paths(edges, fkey, target, 3, 5)
        direct = global_circuits.aggregate_edge(neo4j_driver, fkey, target, corpus, database=db)
        if (fkey, target) in agg:
            assert direct["sum_w"] == agg[(fkey, target)][0] and direct["source_activation_mass"] == mass[fkey]
        else:
            assert direct is None


def test_unknown_feature_is_reported(neo4j_driver, settings):
    import pytest

    with pytest.raises(features.FeatureNotFound, match="no feature"):
        features.feature_page(neo4j_driver, "nope/L0.mlp#0", database=settings.neo4j_database)
