"""Convert the engine's :class:`~workers.engine.graph.Graph` (plus an optional pruning) into a
:class:`~workers.store.records.GraphRecord`, the plain columns the writer stores.

Node kinds are renamed to the store's vocabulary (``feat`` -> ``feature`` ...), features get the
dictionary name of their site (``L2.mlp``), so that their global key is ``<set>/L2.mlp#<index>``.
Edges are taken from the sparse CSR adjacency without densifying: ``adjacency[t, s]`` becomes an edge
``s -> t`` with weight ``A[t, s]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.store.records import GraphRecord, NodeRow

if TYPE_CHECKING:  # the store does not import the engine at run time (no torch model code needed)
    from workers.engine.graph import Graph
    from workers.engine.pruning import PruneResult

ENGINE_KINDS: dict[str, str] = {
    "feat": "feature",
    "err": "error",
    "unexp": "unexpanded",
    "emb": "embedding",
    "pos": "pos_embedding",
    "logit": "logit",
    "target": "target",
    "bias": "bias",
}


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
    else the whole graph. ``max_features`` keeps only the most influential feature nodes (by influence,
    or |activation| without pruning) and the edges among what remains."""
    n = g.n_nodes
    node_mask = torch.ones(n, dtype=torch.bool) if pruned is None else pruned.node_mask.clone()
    influence = pruned.influence if pruned is not None else g.influence
    is_feat = torch.tensor([k == "feat" for k in g.kinds], dtype=torch.bool)
    if max_features is not None:
        score = (influence if influence is not None else g.activation.abs()).double().clone()
        score[~(node_mask & is_feat)] = -float("inf")
        n_keep = min(max_features, int((node_mask & is_feat).sum()))
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[score.topk(n_keep).indices] = True
        node_mask &= chosen | ~is_feat
    idx, val = selected_edges(g, pruned)
    ok = node_mask[idx[0]] & node_mask[idx[1]]
    idx, val = idx[:, ok], val[ok]

    token_strings = g.token_strings
    keep_idx = node_mask.nonzero().flatten().tolist()
    layer, pos, feat, act = g.layer.tolist(), g.pos.tolist(), g.feature.tolist(), g.activation.tolist()
    infl = influence.tolist() if influence is not None else None
    nodes: list[NodeRow] = []
    for i in keep_idx:
        kind = g.kinds[i]
        p = int(pos[i])
        is_feature = kind == "feat"
        nodes.append(NodeRow(
            node_id=g.node_ids[i],
            kind=ENGINE_KINDS[kind],
            layer=int(layer[i]),
            pos=p if p >= 0 else None,
            feature=int(feat[i]) if is_feature else None,
            dictionary=f"L{int(layer[i])}.{g.site[i]}" if is_feature else None,
            activation=float(act[i]),
            influence=None if infl is None else float(infl[i]),
            token=token_strings[p] if 0 <= p < len(token_strings) and kind in ("emb", "pos") else None,
        ))
    ids = g.node_ids
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
