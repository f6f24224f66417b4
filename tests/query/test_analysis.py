"""Cross-prompt analyses vs brute-force references; weight-level virtual weights vs explicit dot products."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.query.graphs import graph_specs, make_records, ref_feature_edges, ref_feature_sets
from workers.analysis import cross_prompt
from workers.analysis.virtual_weights import store_virtual_weights, virtual_weights
from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet

H = hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@H
@given(specs=graph_specs(4), data=st.data())
def test_cross_prompt_analyses_match_brute_force(neo4j_driver, settings, store, specs, data):
    recs = store(make_records(specs))
    db = settings.neo4j_database
    min_influence = data.draw(st.sampled_from([0.0, 0.125, 0.5]))
    subset = data.draw(st.lists(st.sampled_from(recs), min_size=1, max_size=4, unique_by=lambda r: r.graph_id))
    gids = cross_prompt.select_graphs(neo4j_driver, corpus_id=recs[0].corpus_id,
                                      prompt_ids=[r.prompt_id for r in subset], database=db)
    assert gids == sorted(r.graph_id for r in subset)
    sets = {r.graph_id: ref_feature_sets(r, min_influence) for r in subset}
    edges = {r.graph_id: ref_feature_edges(r, min_influence) for r in subset}

    # recurring features
    min_graphs = data.draw(st.integers(1, 3))
    got = cross_prompt.recurring_features(neo4j_driver, gids, min_influence=min_influence, min_graphs=min_graphs,
                                          database=db)
    counts: dict[str, list[float]] = {}
    for s in sets.values():
        for f, a in s.items():
            counts.setdefault(f, []).append(a)
    want = sorted(((f, len(a)) for f, a in counts.items() if len(a) >= min_graphs), key=lambda t: (-t[1], t[0]))
    assert [(r["fkey"], r["n_graphs"]) for r in got["features"]] == want

    # consensus circuit
    frac = data.draw(st.sampled_from([0.25, 0.5, 0.7, 1.0]))
    need = max(1, math.ceil(frac * len(gids) - 1e-9))
    cons = cross_prompt.consensus_circuit(neo4j_driver, gids, min_fraction=frac, min_influence=min_influence,
                                          database=db)
    assert {f["fkey"] for f in cons["features"]} == {f for f, a in counts.items() if len(a) >= need}
    pair_counts: dict[tuple[str, str], list[float]] = {}
    for es in edges.values():
        for k, w in es.items():
            pair_counts.setdefault(k, []).append(w)
    assert {(lk["source"], lk["target"]): lk["mean_w"] for lk in cons["links"]} == \
        {k: sum(w) / len(w) for k, w in pair_counts.items() if len(w) >= need}

    # difference of two prompts' circuits
    a, b = recs[0].graph_id, recs[1].graph_id
    diff = cross_prompt.circuit_difference(neo4j_driver, a, b, min_influence=min_influence, database=db)
    fa, fb = ref_feature_sets(recs[0], min_influence), ref_feature_sets(recs[1], min_influence)
    assert [f["fkey"] for f in diff["features_only_a"]] == sorted(fa.keys() - fb.keys())
    assert [f["fkey"] for f in diff["features_only_b"]] == sorted(fb.keys() - fa.keys())
    assert [(f["fkey"], f["activation_a"], f["activation_b"]) for f in diff["features_shared"]] == \
        [(f, fa[f], fb[f]) for f in sorted(fa.keys() & fb.keys())]
    ea, eb = ref_feature_edges(recs[0], min_influence), ref_feature_edges(recs[1], min_influence)
    assert {(lk["source"], lk["target"]) for lk in diff["links_only_a"]} == ea.keys() - eb.keys()
    assert {(lk["source"], lk["target"]): (lk["w_a"], lk["w_b"]) for lk in diff["links_shared"]} == \
        {k: (ea[k], eb[k]) for k in ea.keys() & eb.keys()}

    # clusters: connected components of the "Jaccard >= threshold" graph
    threshold = data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    clusters = cross_prompt.cluster_prompts(neo4j_driver, gids, threshold=threshold, min_influence=min_influence,
                                            database=db)["clusters"]
    assert sorted(g for c in clusters for g in c) == gids
    label = {g: i for i, c in enumerate(clusters) for g in c}
    for x, y in combinations(gids, 2):
        if cross_prompt.jaccard(set(sets[x]), set(sets[y])) >= threshold:
            assert label[x] == label[y]
    for c in clusters:  # every cluster is connected by links above the threshold
        reached, frontier = {c[0]}, [c[0]]
        while frontier:
            x = frontier.pop()
            for y in c:
                if y not in reached and cross_prompt.jaccard(set(sets[x]), set(sets[y])) >= threshold:
                    reached.add(y)
                    frontier.append(y)
        assert reached == set(c)


def test_jaccard_and_validation():
    assert cross_prompt.jaccard(set(), set()) == 1.0
    assert cross_prompt.jaccard({1, 2}, {2, 3}) == 1 / 3
    with pytest.raises(ValueError, match="graph_ids or a corpus_id"):
        cross_prompt.select_graphs(None)  # type: ignore[arg-type]


def tiny_dictionary_set(seed: int = 0) -> DictionarySet:
    gen = torch.Generator().manual_seed(seed)
    dicts = {}
    for layer in range(2):
        for site in ("attn", "mlp"):
            cfg = DictionaryConfig(kind="sae" if site == "attn" else "transcoder", site=site, layer=layer, d_in=6,
                                   d_out=6, d_dict=5)
            dicts[(layer, site)] = Dictionary(cfg).init_weights_(gen)
    return DictionarySet(dicts)


def test_virtual_weights_match_explicit_dot_products_and_are_stored(neo4j_driver, settings, unique_id):
    dset = tiny_dictionary_set()
    gamma = {0: torch.linspace(0.5, 1.5, 6), 1: torch.linspace(2.0, 0.5, 6)}
    k = 4
    got = virtual_weights(dset, unique_id, top_k=k, gamma=gamma, scale={1: 2.0}, centre=True)
    want = []
    for (lt, st_), tgt in dset:
        if st_ != "mlp":
            continue
        for t in range(tgt.cfg.d_dict):
            row = tgt.W_enc[t] * gamma[lt]  # the LayerNorm's centring applies to the gain-weighted row
            reader = (row - row.mean()) / (2.0 if lt == 1 else 1.0)
            cands = []
            for (ls, ss), src in dset:
                if ls < lt or (ls == lt and ss == "attn"):
                    for s in range(src.cfg.d_dict):
                        cands.append((f"{unique_id}/L{ls}.{ss}#{s}", float(src.W_dec[s].detach() @ reader.detach())))
            cands.sort(key=lambda c: -abs(c[1]))
            want += [(c[0], f"{unique_id}/L{lt}.mlp#{t}", c[1]) for c in cands[:k]]
    want.sort(key=lambda v: (v[1], -abs(v[2]), v[0]))
    assert [(v.source, v.target) for v in got] == [(w[0], w[1]) for w in want]
    assert [v.w for v in got] == pytest.approx([w[2] for w in want], rel=1e-5, abs=1e-6)
    # L0.mlp reads only L0.attn (5 sources >= k); L1.mlp reads L0.attn, L0.mlp, L1.attn
    assert {v.source.split("/")[1].split("#")[0] for v in got if "/L0.mlp#" in v.target} == {"L0.attn"}

    from service.query.global_circuits import virtual_weight_neighbours

    db = settings.neo4j_database
    try:
        assert store_virtual_weights(neo4j_driver, unique_id, got, database=db) == len(got)
        store_virtual_weights(neo4j_driver, unique_id, got, database=db)  # replaces, never duplicates
        target = f"{unique_id}/L1.mlp#0"
        rows = virtual_weight_neighbours(neo4j_driver, target, "upstream", limit=100, database=db)
        assert [(r["fkey"], r["w"]) for r in rows] == [(v.source, v.w) for v in got if v.target == target]
    finally:
        neo4j_driver.execute_query("MATCH (f:Feature) WHERE f.fkey STARTS WITH $p DETACH DELETE f", p=unique_id + "/",
                                   database_=db)
