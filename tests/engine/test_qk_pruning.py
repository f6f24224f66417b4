"""QK decomposition identity and influence pruning properties."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import PROMPTS
from workers.engine import targets as T
from workers.engine.attribution import build_graph
from workers.engine.graph import Graph, TargetInfo
from workers.engine.pruning import influence, prune, unpruned_scores
from workers.engine.qk import circuit_heads, qk_attribution


@pytest.fixture(scope="module")
def traced(lin):
    tr = lin.trace(PROMPTS[0])
    return tr, build_graph(lin, tr, T.top_logits(lin, tr))


def test_qk_pairs_and_bias_terms_sum_to_score(lin, traced):
    tr, g = traced
    cases = [(0, 1, 5, 0), (1, 2, 7, 3), (2, 3, 9, 9)]
    cases += [(lyr, h, q, k) for lyr, h, q, k, _ in circuit_heads(lin, tr, g, top_heads=2)]
    for layer, head, q, k in cases:
        r = qk_attribution(lin, tr, g, layer, head, q, k)
        assert abs(r.total() - r.score) < 2e-5 * max(1.0, abs(r.score)), (layer, head, q, k)
        # query-side nodes sit at the query position or before it (through earlier attention), key-side at ≤ k
        qi, ki, _ = r.pair_matrix()
        assert all(int(g.pos[i]) <= q for i in qi.tolist())
        assert all(int(g.pos[i]) <= k for i in ki.tolist())
        assert len(r.top_pairs(3)) == min(3, len(qi) * len(ki))


def _toy_graph(A: torch.Tensor, kinds: list[str], weights: dict[int, float]) -> Graph:
    n = len(kinds)
    return Graph(node_ids=[f"{k}:{i}" for i, k in enumerate(kinds)], kinds=kinds, layer=torch.zeros(n, dtype=torch.long),
                 site=[""] * n, pos=torch.zeros(n, dtype=torch.long), feature=torch.zeros(n, dtype=torch.long),
                 activation=torch.ones(n), value=torch.zeros(n), adjacency=A.to_sparse_csr(),
                 targets=[TargetInfo(f"{kinds[i]}:{i}", "", "final", 0, w, 0.0) for i, w in weights.items()],
                 tokens=[0])


def test_influence_is_the_power_series():
    gen = torch.Generator().manual_seed(0)
    n = 12
    A = torch.randn(n, n, generator=gen).tril(-1)  # acyclic: row t reads sources s < t
    A[A.abs() < 0.5] = 0
    Ahat = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-30)
    w = torch.zeros(n, dtype=torch.float64)
    w[-1], w[-2] = 0.7, 0.3
    expect = torch.zeros(n, dtype=torch.float64)
    x = w.clone()
    for _ in range(n):
        x = x @ Ahat.double()
        expect += x
    coo = A.to_sparse_coo().coalesce()
    idx, val = coo.indices(), coo.values()
    rowsum = torch.zeros(n, dtype=torch.float64).index_add_(0, idx[0], val.abs().double())
    got = influence(idx, val.abs().double() / rowsum[idx[0]], w)
    assert torch.allclose(got, expect, atol=1e-12)


def test_scores_on_a_graph_without_errors_and_with_only_errors():
    # tokens 0,1 -> features 2,3 -> logit 4; error 5 feeds the logit only in the second case
    kinds = ["emb", "emb", "feat", "feat", "logit", "err"]
    A = torch.zeros(6, 6)
    A[2, 0], A[3, 1], A[4, 2], A[4, 3] = 1.0, 2.0, 0.5, 0.5
    r = prune(_toy_graph(A, kinds, {4: 1.0}), 1.0, 1.0)
    assert r.scores["replacement_unpruned"] == pytest.approx(1.0)
    assert r.scores["completeness_unpruned"] == pytest.approx(1.0)
    A[4, 5] = 1.0  # the error carries half of the logit's direct input
    r = prune(_toy_graph(A, kinds, {4: 1.0}), 1.0, 1.0)
    # I(tokens) = 0.5 (via features), I(error) = 0.5
    assert r.scores["replacement_unpruned"] == pytest.approx(0.5)
    # completeness: only the logit row has error input (half); I + w = .25 for tokens and features,
    # 1 for the logit, .5 for the error
    assert r.scores["completeness_unpruned"] == pytest.approx((4 * 0.25 + 0.5 * 1.0 + 0.5) / 2.5)
    # a graph stored unpruned gets the same scores (workers/pipeline/compute.py puts them in its metrics)
    assert unpruned_scores(_toy_graph(A, kinds, {4: 1.0})) == {k: v for k, v in r.scores.items()
                                                              if k.endswith("_unpruned")}


def test_prune_keeps_tokens_targets_and_no_dangling(traced):
    _, g = traced
    before = (g.influence, g.adjacency.values().clone())
    r = prune(g)
    assert g.influence is before[0] and torch.equal(g.adjacency.values(), before[1])  # prune leaves g alone
    kinds = g.kinds
    for i, k in enumerate(kinds):
        if k in ("emb", "pos", "logit"):
            assert r.node_mask[i]
    assert 0 < r.scores["n_nodes_kept"] < g.n_nodes
    idx = r.coo_indices[:, r.edge_mask]
    assert r.node_mask[idx[0]].all() and r.node_mask[idx[1]].all()
    kept_feats = [i for i in r.node_mask.nonzero().flatten().tolist() if kinds[i] == "feat"]
    for i in kept_feats:
        assert (idx[0] == i).any() and (idx[1] == i).any()
    for key in ("replacement_unpruned", "completeness_unpruned", "replacement_pruned", "completeness_pruned"):
        assert 0.0 <= r.scores[key] <= 1.0
    # looser thresholds keep at least as much
    r2 = prune(g, 0.95, 0.995)
    assert r2.scores["n_nodes_kept"] >= r.scores["n_nodes_kept"]
