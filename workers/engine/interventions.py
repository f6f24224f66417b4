"""Interventions on nodes, in the frozen model (agrees with the graph's edges exactly) and in the live
model (features recomputed, patterns and norms live: the faithfulness check).

An edit maps a node id to a number: for a feature, its new activation; for an error, token or positional
embedding node, a multiplier of its clean vector (0 ablates it); for an ``unexp`` leaf of a budgeted graph
(give the graph), a multiplier of the activation of every feature it holds.
"""

from __future__ import annotations

import torch

from workers.engine.graph import Graph
from workers.engine.linearise import Linearised, Trace
from workers.engine.targets import Target
from workers.vocabulary import ids
from workers.vocabulary import tensors as tn


def _read(run, t: Target) -> torch.Tensor:
    x = run.tensors[t.tensor][:, t.pos]
    return x @ t.vector.to(x.dtype) + t.offset


def unexpanded_features(graph: Graph, trace: Trace, leaf: str) -> list[tuple[str, float]]:
    """(feature id, activation) of the active features an ``unexp`` leaf of ``graph`` holds: those active
    at its site and position in ``trace`` that are not nodes of the graph."""
    p = ids.parse(leaf)
    if p.kind != "unexp" or leaf not in graph:
        raise ValueError(f"{leaf} is not an unexpanded-features leaf of this graph")
    rec = trace.sites[(p.layer, p.site)]
    at = (rec.pos_idx == p.pos).nonzero().flatten().tolist()
    out = []
    for j in at:
        fid = ids.feat_id(p.layer, p.site, p.pos, int(rec.feat_idx[j]))
        if fid not in graph:
            out.append((fid, float(rec.acts[j])))
    return out


@torch.no_grad()
def frozen_values(lin: Linearised, trace: Trace, targets: list[Target], edits: list[dict[str, float]],
                  graph: Graph | None = None) -> torch.Tensor:
    """Target values in the frozen model under each edit set: [len(edits), len(targets)].

    With every other feature, pattern and norm scale frozen, setting feature s from a_s to v changes each
    target t by exactly (v/a_s − 1)·A[t, s]; zeroing it changes t by −A[t, s]. Edits of ``unexp`` leaves
    need the budgeted ``graph`` they belong to."""
    expanded_edits = []
    for e in edits:
        flat: dict[str, float] = {}
        for node, value in e.items():
            if node.startswith("unexp:"):
                if graph is None:
                    raise ValueError(f"editing {node} needs the graph it belongs to (graph=...)")
                for fid, act in unexpanded_features(graph, trace, node):
                    flat[fid] = float(value) * act
            else:
                flat[node] = value
        expanded_edits.append(flat)
    edits = expanded_edits
    B = len(edits)
    feat_edits: list[dict[tuple[int, str, int, int], float]] = []
    err_scale = {k: torch.ones(B, trace.n_pos, 1) for k in trace.sites}
    emb_scale = torch.ones(B, trace.n_pos, 1)
    pos_scale = torch.ones(B, trace.n_pos, 1)
    for b, e in enumerate(edits):
        fe = {}
        for node, value in e.items():
            p = ids.parse(node)
            if p.kind == "feat":
                fe[(p.layer, p.site, p.pos, p.feature)] = float(value)
            elif p.kind == "err":
                err_scale[(p.layer, p.site)][b, p.pos] = value
            elif p.kind == "emb":
                emb_scale[b, p.pos] = value
            elif p.kind == "pos":
                pos_scale[b, p.pos] = value
            else:
                raise ValueError(f"cannot intervene on {node}: only feat, err, emb and pos nodes are inputs")
        feat_edits.append(fe)
    inj = lin.injections(trace, B, feat_edits)
    run = lin.frozen_forward(trace, batch=B, injections=inj, err_scale=err_scale, emb_scale=emb_scale,
                             pos_scale=pos_scale, require_grad=False)
    return torch.stack([_read(run, t) for t in targets], dim=1)


@torch.no_grad()
def live_values(lin: Linearised, trace: Trace, targets: list[Target], edits: list[dict[str, float]]) -> torch.Tensor:
    """Target values in the live model (dictionaries spliced, features recomputed from live inputs, the
    clean errors added back, attention and norms live) under each edit set of feature activations:
    [len(edits), len(targets)]. Only targets read at the unembedding input (logits, logit differences,
    final directions) are supported."""
    for t in targets:
        if t.tensor != tn.FINAL:
            raise NotImplementedError(f"live interventions read targets at the unembedding only, not {t.tensor}")
    out = []
    for e in edits:
        site_edits: dict[tuple[int, str], list[tuple[int, int, float]]] = {}
        for node, value in e.items():
            p = ids.parse(node)
            if p.kind != "feat":
                raise ValueError(f"live interventions edit features only, not {node}")
            site_edits.setdefault((p.layer, p.site), []).append((p.pos, p.feature, float(value)))
        final = lin.live_forward(trace.input_ids, site_edits, errors=trace, return_final=True)
        out.append(torch.stack([final[t.pos] @ t.vector + t.offset for t in targets]))
    return torch.stack(out)


def faithfulness(lin: Linearised, trace: Trace, targets: list[Target], node: str, predicted: torch.Tensor) -> dict:
    """Ablate ``node`` (a feature) in the live model and compare the change of each target with the
    graph's prediction ``predicted`` [len(targets)] (e.g. the node's total attribution, negated).
    Returns the live change, the prediction and their ratio."""
    base = live_values(lin, trace, targets, [{}])[0]
    after = live_values(lin, trace, targets, [{node: 0.0}])[0]
    live = after - base
    return {"node": node, "live_change": live.tolist(), "predicted_change": predicted.tolist(),
            "ratio": (live / predicted.where(predicted != 0, torch.ones_like(predicted))).tolist()}
