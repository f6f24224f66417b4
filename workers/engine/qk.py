"""QK attribution: why a head attends where it does.

With norms frozen, a head's query at position q and key at position k are affine in the graph's leaves
(rotary is a fixed linear map per position; QK-norm scales are frozen): ``q = Σ_n Q_n + q_bias``,
``k = Σ_m K_m + k_bias``, where ``Q_n`` is node n's direct contribution (its edge into every query
component). The pre-softmax score (before any softcap) ``s = scaling · q·k`` is bilinear, so it splits
exactly into node pairs ``scaling · Q_n·K_m`` plus the bias cross-terms ``scaling · (q_bias·K_m,
Q_n·k_bias, q_bias·k_bias)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.engine.attribution import AttributionSettings
from workers.engine.backward import edges
from workers.engine.bias import bias_contributions
from workers.engine.graph import Graph
from workers.engine.linearise import Linearised, Trace
from workers.engine.nodes import SiteColumns, read_against
from workers.engine.targets import Target
from workers.vocabulary import ids
from workers.vocabulary.kinds import STORE_KIND, TOKEN_KINDS
from workers.vocabulary.tensors import SITES


@dataclass
class QKAttribution:
    layer: int
    head: int
    q_pos: int
    k_pos: int
    score: float  # scaling · q·k from the clean run (pre-softcap)
    node_ids: list[str]  # the graph's node ids (columns of Q and K)
    Q: torch.Tensor  # [N, head_dim] each node's direct contribution to the query
    K: torch.Tensor  # [N, head_dim] ... to the key
    q_bias: torch.Tensor  # [head_dim]
    k_bias: torch.Tensor  # [head_dim]
    scaling: float

    def pair_matrix(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query nodes idx [nq], key nodes idx [nk], scores [nq, nk]) over nodes that contribute."""
        qi = (self.Q != 0).any(1).nonzero().flatten()
        ki = (self.K != 0).any(1).nonzero().flatten()
        return qi, ki, self.scaling * self.Q[qi] @ self.K[ki].T

    def bias_terms(self) -> dict[str, float]:
        s = self.scaling
        return {
            "q_bias·k_nodes": float(s * self.q_bias @ self.K.sum(0)),
            "q_nodes·k_bias": float(s * self.Q.sum(0) @ self.k_bias),
            "q_bias·k_bias": float(s * self.q_bias @ self.k_bias),
        }

    def total(self) -> float:
        """Σ pairs + Σ bias terms; equals ``score``."""
        _, _, M = self.pair_matrix()
        return float(M.double().sum()) + sum(self.bias_terms().values())

    def top_pairs(self, k: int = 10) -> list[tuple[str, str, float]]:
        qi, ki, M = self.pair_matrix()
        flat = M.flatten()
        top = flat.abs().topk(min(k, flat.numel())).indices
        return [(self.node_ids[int(qi[i // M.shape[1]])], self.node_ids[int(ki[i % M.shape[1]])], float(flat[i]))
                for i in top.tolist()]


def _columns(lin: Linearised, trace: Trace, g: Graph) -> tuple[torch.Tensor, torch.Tensor | None, list[SiteColumns]]:
    """Rebuild the source-column layout of ``g`` (which must come from this trace)."""
    if "unexp" in g.kinds:
        raise ValueError("QK attribution needs a graph with every active feature as a node; this one was computed "
                         "under a node budget (max_feature_nodes): recompute it without one")
    n_pos = trace.n_pos
    emb = torch.tensor([g.index(ids.emb_id(p)) for p in range(n_pos)])
    pos = torch.tensor([g.index(ids.pos_id(p)) for p in range(n_pos)]) if trace.pos_emb is not None else None
    cols = []
    for rec in trace.site_list():
        layer, site = rec.key
        err = torch.tensor([g.index(ids.err_id(layer, site, p)) for p in range(n_pos)])
        counts = torch.bincount(rec.pos_idx, minlength=n_pos) if rec.n_active else torch.zeros(n_pos, dtype=torch.long)
        K = int(counts.max()) if rec.n_active else 0
        fc = torch.full((n_pos, K), -1, dtype=torch.long)
        grads = read_against(rec)
        fd = torch.zeros(n_pos, 1 + K, rec.out.shape[-1] * len(grads))  # slot 0 the error (SiteColumns.vectors)
        fd[:, 0, : rec.out.shape[-1]] = rec.err.float()
        slot = torch.zeros(n_pos, dtype=torch.long)
        if rec.dictionary is not None:
            W = rec.dictionary.W_dec.detach()
            for p, f, a in zip(rec.pos_idx.tolist(), rec.feat_idx.tolist(), rec.acts.tolist(), strict=True):
                k = int(slot[p])
                slot[p] += 1
                fc[p, k] = g.index(ids.feat_id(layer, site, p, f))
                fd[p, 1 + k] = a * W[f]
        cols.append(SiteColumns(rec.key, err, fc, fd, grads))
    return emb, pos, cols


def qk_attribution(
    lin: Linearised, trace: Trace, g: Graph, layer: int, head: int, q_pos: int, k_pos: int,
    settings: AttributionSettings | None = None,
) -> QKAttribution:
    """Exact decomposition of head ``head``'s score at (q_pos, k_pos) in ``layer`` into node pairs."""
    if not 0 <= k_pos <= q_pos < trace.n_pos:
        raise ValueError(f"need 0 ≤ k_pos ≤ q_pos < {trace.n_pos}, got q_pos={q_pos}, k_pos={k_pos}")
    rec = trace.attn[layer]
    n_heads, hd = rec.q.shape[0], rec.q.shape[-1]
    kv_head = head // (n_heads // rec.k.shape[0])
    rows: list[Target] = []
    for which, h, p in (("q", head, q_pos), ("k", kv_head, k_pos)):
        width = (n_heads if which == "q" else rec.k.shape[0]) * hd
        for j in range(hd):
            v = torch.zeros(width)
            v[h * hd + j] = 1.0
            rows.append(Target(ids.target_id(f"{which}{j}"), f"{which}:L{layer}", p, v))
    index = {n: i for i, n in enumerate(g.node_ids)}
    n = g.n_nodes
    for j, t in enumerate(rows):
        index[t.node_id] = n + j
    emb, pos, cols = _columns(lin, trace, g)
    chunks = edges(lin, trace, rows, index, emb, pos, cols, settings or AttributionSettings(), None,
                   value_only=False)
    M = torch.zeros(len(rows), n)
    for R, C, V in chunks:
        M.index_put_((R.long() - n, C.long()), V, accumulate=True)
    bias = bias_contributions(lin, trace, rows, grouped=False)["all"].float()
    Q, K = M[:hd].T.contiguous(), M[hd:].T.contiguous()
    score = rec.scaling * float(rec.q[head, q_pos].double() @ rec.k[kv_head, k_pos].double())
    return QKAttribution(layer, head, q_pos, k_pos, score, list(g.node_ids), Q, K, bias[:hd], bias[hd:],
                         rec.scaling)


def circuit_heads(lin: Linearised, trace: Trace, g: Graph, top_edges: int = 50, top_heads: int = 3
                  ) -> list[tuple[int, int, int, int, float]]:
    """Heads likely to carry the graph's strongest cross-position (OV) edges: for each of the
    ``top_edges`` largest |edges| s → t with pos(s) < pos(t), every head of the layers between the two
    nodes is credited |w| · pattern[head, pos(t), pos(s)]; returns the best ``top_heads`` as
    (layer, head, q_pos, k_pos, credit), with the (q, k) pair of their largest credited edge. A ranking
    heuristic for choosing heads; the QK decomposition of each chosen head is exact."""
    coo = g.adjacency.to_sparse_coo().coalesce()
    (r, c), v = coo.indices(), coo.values()
    cross = (g.pos[c] < g.pos[r]) & (g.pos[c] >= 0)
    r, c, v = r[cross], c[cross], v[cross]
    order = v.abs().argsort(descending=True)[:top_edges]
    credit: dict[tuple[int, int], float] = {}
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    for i in order.tolist():
        t, s, w = int(r[i]), int(c[i]), float(v[i])
        lo = int(g.layer[s]) + (1 if g.site[s] in SITES else 0)
        if STORE_KIND[g.kinds[s]] in TOKEN_KINDS:
            lo = 0
        hi = min(int(g.layer[t]), lin.n_layers - 1)
        qp, kp = int(g.pos[t]), int(g.pos[s])
        for layer in range(lo, hi + 1):
            pat = trace.attn[layer].pattern[:, qp, kp]
            for h, pv in enumerate(pat.tolist()):
                cr = abs(w) * pv
                credit[(layer, h)] = credit.get((layer, h), 0.0) + cr
                if cr > best.get((layer, h), (0.0, 0, 0))[0]:
                    best[(layer, h)] = (cr, qp, kp)
    # Only heads that carried something: a head whose pattern is 0 at every credited (q, k) has no best pair.
    ranked = sorted(((k, v) for k, v in credit.items() if k in best), key=lambda kv: -kv[1])[:top_heads]
    return [(layer, h, best[(layer, h)][1], best[(layer, h)][2], cr) for (layer, h), cr in ranked]
