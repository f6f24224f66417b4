"""Influence pruning and graph scores, as circuit-tracer defines them (REFERENCE.md), on sparse matrices.

Â = row-normalised |A| (bias leaves left out: circuit-tracer has none, and a constant explains nothing);
influence ``I = Σ_{k≥1} w Â^k`` from the target weights w (logit probabilities; 1 for other targets).
Nodes: keep the smallest set covering ``node_threshold`` of the influence (tokens and targets always
kept); edges: score ``Â′[t,s]·(I′[t] + w[t])`` on the node-pruned graph, keep ``edge_threshold``; then
drop dangling nodes until nothing changes.

Replacement score = I(tokens) / (I(tokens) + I(errors) + I(unexp)); completeness score =
Σ_n (1 − Σ_{e∈errors} Â[n,e])·(I[n] + w[n]) / Σ_n (I[n] + w[n]).

Unexpanded-features leaves (``unexp``, node budget) are leaves like errors: pruned by influence, no incoming
edges needed. They hold dictionary features, so completeness counts them as explained input; but their
influence stops there instead of reaching the tokens, so replacement counts it against the tokens (without a
budget there are none and both scores are circuit-tracer's). ``unexpanded`` = I(unexp) / (I(tokens) +
I(errors) + I(unexp)), the share of the end-to-end influence left at the budget's boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.engine.graph import Graph
from workers.vocabulary.defaults import EDGE_THRESHOLD, NODE_THRESHOLD
from workers.vocabulary.kinds import OUTPUT_KINDS, STORE_KIND, TOKEN_KINDS


@dataclass
class PruneResult:
    node_mask: torch.Tensor  # [N] bool
    edge_mask: torch.Tensor  # [nnz] bool, aligned with the COO entries of ``coo_indices``
    coo_indices: torch.Tensor  # [2, nnz] (target, source)
    influence: torch.Tensor  # [N], on the unpruned graph
    scores: dict[str, float]


def _coo(g: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    coo = g.adjacency.to_sparse_coo().coalesce()
    return coo.indices(), coo.values()


def _normalised(idx: torch.Tensor, val: torch.Tensor, n: int) -> torch.Tensor:
    """|A| with rows normalised to sum 1 (empty rows stay 0), as values aligned with idx."""
    a = val.abs().double()
    rowsum = torch.zeros(n, dtype=torch.float64).index_add_(0, idx[0], a)
    return a / rowsum.clamp_min(1e-30)[idx[0]]


def influence(idx: torch.Tensor, norm_val: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """I = Σ_{k≥1} w Â^k by repeated sparse vector products; terminates because the graph is acyclic."""
    n = w.numel()
    At = torch.sparse_coo_tensor(torch.stack([idx[1], idx[0]]), norm_val, size=(n, n)).coalesce()
    x = w.double()
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(n + 1):
        x = torch.sparse.mm(At, x[:, None])[:, 0]
        if not bool((x != 0).any()):
            return total
        total += x
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def _threshold(scores: torch.Tensor, frac: float) -> float:
    """Smallest score among the top scores whose cumulative sum reaches ``frac`` of the total."""
    s, _ = scores.flatten().sort(descending=True)
    total = s.sum()
    if total <= 0:
        return float("inf")
    cum = s.cumsum(0) / total
    k = int(torch.searchsorted(cum, torch.tensor(frac, dtype=cum.dtype)).clamp_max(s.numel() - 1))
    return float(s[k])


def target_weights(g: Graph) -> torch.Tensor:
    w = torch.zeros(g.n_nodes, dtype=torch.float64)
    for t in g.targets:
        w[g.index(t.node_id)] = t.weight
    return w


def scores(g: Graph, idx: torch.Tensor, val: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    kinds = g.kinds
    nv = _normalised(idx, val, g.n_nodes)
    I = influence(idx, nv, w)
    tok = torch.tensor([STORE_KIND[k] in TOKEN_KINDS for k in kinds])
    err = torch.tensor([k == "err" for k in kinds])
    unexp = torch.tensor([k == "unexp" for k in kinds])
    ti, ei, ui = float(I[tok].sum()), float(I[err].sum()), float(I[unexp].sum())
    err_frac = torch.zeros(g.n_nodes, dtype=torch.float64).index_add_(0, idx[0], nv * err[idx[1]].double())
    out_inf = I + w
    leaves = ti + ei + ui
    return {
        "replacement": ti / leaves if leaves > 0 else float("nan"),
        "completeness": float(((1 - err_frac) * out_inf).sum() / out_inf.sum()),
        "unexpanded": ui / leaves if leaves > 0 else float("nan"),
    }


def _edges_without_bias(g: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjacency's (target, source) indices and weights, minus edges out of bias leaves."""
    idx, val = _coo(g)
    keep = torch.tensor([k != "bias" for k in g.kinds])[idx[1]]
    return idx[:, keep], val[keep]


def unpruned_scores(g: Graph) -> dict[str, float]:
    """The whole graph's scores (``replacement_unpruned``, ``completeness_unpruned``, ``unexpanded_unpruned``), as
    :func:`prune` reports them, for a graph stored without pruning."""
    idx, val = _edges_without_bias(g)
    return {f"{k}_unpruned": v for k, v in scores(g, idx, val, target_weights(g)).items()}


def prune(g: Graph, node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD) -> PruneResult:
    """Influence pruning of ``g`` (see the module doc). ``g`` is not modified: the influence is returned in
    the result (``g.influence = result.influence`` stores it with the graph)."""
    idx, val = _edges_without_bias(g)
    n = g.n_nodes
    not_bias = torch.tensor([g.kinds[i] != "bias" for i in range(n)])
    w = target_weights(g)
    nv = _normalised(idx, val, n)
    I = influence(idx, nv, w)
    always = torch.tensor([STORE_KIND[k] in TOKEN_KINDS + OUTPUT_KINDS for k in g.kinds]) | (w > 0)
    node_score = I.clone()
    node_score[always | ~not_bias] = 0
    node_mask = (node_score >= _threshold(node_score[~always & not_bias], node_threshold)) & not_bias
    node_mask |= always
    # edges on the node-pruned graph
    em = node_mask[idx[0]] & node_mask[idx[1]]
    nv2 = _normalised(idx[:, em], val[em], n)
    I2 = influence(idx[:, em], nv2, w)
    escore = torch.zeros(idx.shape[1], dtype=torch.float64)
    escore[em] = nv2 * (I2 + w)[idx[0, em]]
    edge_mask = em & (escore >= _threshold(escore[em], edge_threshold))
    # dangling nodes: non-token nodes need an outgoing kept edge (unless targets), features an incoming one
    while True:
        has_out = torch.zeros(n, dtype=torch.bool)
        has_out[idx[1, edge_mask]] = True
        has_in = torch.zeros(n, dtype=torch.bool)
        has_in[idx[0, edge_mask]] = True
        feat = torch.tensor([k == "feat" for k in g.kinds])
        new = node_mask & (has_out | always) & (has_in | ~feat | (w > 0))
        new |= always
        edge_mask2 = edge_mask & new[idx[0]] & new[idx[1]]
        if torch.equal(new, node_mask) and torch.equal(edge_mask2, edge_mask):
            break
        node_mask, edge_mask = new, edge_mask2
    sc = {f"{k}_unpruned": v for k, v in scores(g, idx, val, w).items()}
    sc.update({f"{k}_pruned": v for k, v in scores(g, idx[:, edge_mask], val[edge_mask], w).items()})
    sc["n_nodes_kept"] = int(node_mask.sum())
    sc["n_edges_kept"] = int(edge_mask.sum())
    full_mask = torch.zeros(n, dtype=torch.bool)
    full_mask |= node_mask
    return PruneResult(node_mask=full_mask, edge_mask=edge_mask, coo_indices=idx, influence=I.float(), scores=sc)
