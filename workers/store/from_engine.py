"""Convert the engine's :class:`~workers.engine.graph.Graph` (plus an optional pruning) into a
:class:`~workers.store.records.GraphRecord`, the plain columns the writer stores.

Node kinds are renamed to the store's vocabulary (``feat`` -> ``feature`` ...; workers/vocabulary/kinds.py), features get the
dictionary name of their site (``L2.mlp``), so that their global key is ``<set>/L2.mlp#<index>``.
Edges are taken from the sparse CSR adjacency without densifying: ``adjacency[t, s]`` becomes an edge
``s -> t`` with weight ``A[t, s]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.store.records import GraphRecord, NodeRow
from workers.vocabulary import ids
from workers.vocabulary.kinds import STORE_KIND, TOKEN_KINDS
from workers.vocabulary.tensors import site_name

if TYPE_CHECKING:  # the store does not import the engine at run time (no torch model code needed)
    from workers.engine.graph import Graph
    from workers.engine.pruning import PruneResult

def _coo(g: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """([2, nnz] (target, source) indices, [nnz] values) of the CSR adjacency, in CSR order."""
    crow = g.adjacency.crow_indices()
    rows = torch.repeat_interleave(torch.arange(g.n_nodes), crow[1:] - crow[:-1])
    return torch.stack([rows, g.adjacency.col_indices().long()]), g.adjacency.values()


def selected_edges(g: Graph, pruned: PruneResult | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges to store: all of them, or those the pruning kept. Returns ([2, E] (target, source), [E])."""
    idx, val = _coo(g)
    if pruned is None:
        return idx, val
    # prune() works on the coalesced COO minus edges out of bias leaves; rebuild that order and check it
    # is the one its edge mask refers to before using the mask.
    coo = g.adjacency.to_sparse_coo().coalesce()
    idx, val = coo.indices(), coo.values()
    not_bias = torch.tensor([k != "bias" for k in g.kinds], dtype=torch.bool)
    keep = not_bias[idx[1]]
    idx, val = idx[:, keep], val[keep]
    if not torch.equal(idx, pruned.coo_indices):
        raise ValueError("the PruneResult does not belong to this graph (its edge indices differ)")
    return idx[:, pruned.edge_mask], val[pruned.edge_mask]


def _fold_dropped_features(g: Graph, idx: torch.Tensor, val: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor,
                           node_ids: list[str], kinds: list[str], layer: list, pos: list, feat: list, act: list,
                           infl: list | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Edges out of ``dropped`` features re-pointed at the ``unexp`` leaf of their (site, position) and summed
    per (target, leaf); edges into them removed. New leaves are appended to the per-node lists (in place).
    Returns (edges [2, E] over the extended node list, weights, node indices to store)."""
    index = {nid: i for i, nid in enumerate(node_ids)}
    where = torch.arange(len(node_ids))
    for i in dropped.nonzero().flatten().tolist():
        leaf = ids.unexp_id(int(layer[i]), g.site[i], int(pos[i]))
        j = index.get(leaf)
        if j is None:
            j = index[leaf] = len(node_ids)
            node_ids.append(leaf)
            kinds.append("unexp")
            layer.append(layer[i])
            pos.append(pos[i])
            feat.append(-1)
            act.append(1.0)
            if infl is not None:
                infl.append(0.0)
        where[i] = j
        if infl is not None:
            infl[j] += infl[i]
    n_all = len(node_ids)
    keep = torch.zeros(n_all, dtype=torch.bool)
    keep[: kept.numel()] = kept
    keep[kept.numel():] = True
    keep[where[dropped]] = True
    ok = ~dropped[idx[0]]
    src = where[idx[1, ok]]
    key = idx[0, ok] * n_all + src
    uk, inv = torch.unique(key, return_inverse=True)
    summed = torch.zeros(uk.numel(), dtype=torch.float64).index_add_(0, inv, val[ok].double())
    return torch.stack([uk // n_all, uk % n_all]), summed.float(), keep.nonzero().flatten().tolist()


def graph_to_record(
    g: Graph,
    *,
    graph_id: str,
    prompt_id: str,
    corpus_id: str,
    model: str,
    dictionary_set: str,
    pruned: PruneResult | None = None,
    max_features: int | None = None,
    settings: dict | None = None,
    metrics: dict | None = None,
) -> GraphRecord:
    """The record of ``g``: the pruned node and edge sets when ``pruned`` is given (influence from it),
    else the whole graph.

    ``max_features`` (a storage-time cap, after the computation; the engine's ``max_feature_nodes`` budgets
    the computation itself) keeps the most influential feature nodes (by influence, or |activation| without
    pruning) as they are. The others are treated as the node budget treats unexpanded features: their rows
    are dropped and their outgoing edges summed into the ``unexpanded`` leaf of their (site, position)
    (merged with the engine's leaf if the graph has one), so the stored rows keep summing to what they
    summed to before the cap. A leaf's influence is the sum of its members' (an upper bound)."""
    n = g.n_nodes
    node_mask = torch.ones(n, dtype=torch.bool) if pruned is None else pruned.node_mask.clone()
    influence = pruned.influence if pruned is not None else g.influence
    is_feat = torch.tensor([k == "feat" for k in g.kinds], dtype=torch.bool)
    idx, val = selected_edges(g, pruned)
    ok = node_mask[idx[0]] & node_mask[idx[1]]
    idx, val = idx[:, ok], val[ok]
    node_ids, kinds = list(g.node_ids), list(g.kinds)
    layer, pos, feat, act = g.layer.tolist(), g.pos.tolist(), g.feature.tolist(), g.activation.tolist()
    infl = influence.tolist() if influence is not None else None
    keep_idx = node_mask.nonzero().flatten().tolist()
    if max_features is not None and int((node_mask & is_feat).sum()) > max_features:
        score = (influence if influence is not None else g.activation.abs()).double().clone()
        score[~(node_mask & is_feat)] = -float("inf")
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[score.topk(max_features).indices] = True
        dropped = node_mask & is_feat & ~chosen
        idx, val, keep_idx = _fold_dropped_features(g, idx, val, dropped, node_mask & ~dropped, node_ids, kinds,
                                                    layer, pos, feat, act, infl)

    token_strings = g.token_strings
    nodes: list[NodeRow] = []
    for i in keep_idx:
        kind = kinds[i]
        p = int(pos[i])
        is_feature = kind == "feat"
        nodes.append(NodeRow(
            node_id=node_ids[i],
            kind=STORE_KIND[kind],
            layer=int(layer[i]),
            pos=p if p >= 0 else None,
            feature=int(feat[i]) if is_feature else None,
            dictionary=site_name(int(layer[i]), g.site[i]) if is_feature else None,  # leaves appended: not features
            activation=float(act[i]),
            influence=None if infl is None else float(infl[i]),
            token=token_strings[p] if 0 <= p < len(token_strings) and STORE_KIND[kind] in TOKEN_KINDS else None,
        ))
    ids = node_ids
    return GraphRecord(
        graph_id=graph_id,
        prompt_id=prompt_id,
        corpus_id=corpus_id,
        dictionary_set=dictionary_set,
        model=model,
        nodes=nodes,
        edge_src=[ids[s] for s in idx[1].tolist()],
        edge_dst=[ids[t] for t in idx[0].tolist()],
        edge_w=val.tolist(),
        target={"targets": [t.to_dict() for t in g.targets]},
        settings=settings or {},
        metrics={**(pruned.scores if pruned is not None else {}), **(metrics or {})},
        provenance={**g.provenance, "prompt": g.prompt, "tokens": g.tokens, "token_strings": g.token_strings},
    )
