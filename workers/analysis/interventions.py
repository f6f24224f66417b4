"""Interventions on a stored graph's prompt, computed by a worker (analysis kind ``interventions``).

A researcher ablates, scales or sets chosen features (a supernode is a list of them) and asks what happens to
the graph's targets. The worker recomputes the prompt (``workers/analysis/recompute.py``) and answers, per target:

- ``frozen_change``: the change with every other feature, attention pattern and norm scale frozen
  (``workers/engine/interventions.frozen_values``). There the effect is linear in the edits:
- ``from_edges``: ``Σ_s (v_s / a_s − 1) · A[t, s]`` over the edited features s (clean activation a_s, new value
  v_s, edge A[t, s] of the recomputed graph). It equals ``frozen_change`` to float tolerance: the graph's edges
  are exactly the frozen model's direct effects (the identity the tests hold).
- ``live_change``: the change in the live model, features recomputed downstream, patterns and norms live
  (``live_values``): how far the linear picture carries.

and the ``top_logit_changes`` at the targets' position in the live model (largest |Δ logit| first).
"""

from __future__ import annotations

from typing import Literal

from neo4j import Driver

from workers.analysis.recompute import recompute_graph
from workers.vocabulary import tensors as tn

Mode = Literal["ablate", "scale", "set"]


def new_value(mode: str, clean: float, value: float | None) -> float:
    """The edited activation of a feature whose clean activation is ``clean``."""
    if mode == "ablate":
        return 0.0
    if value is None:
        raise ValueError(f"mode {mode!r} needs a value")
    if mode == "scale":
        return float(value) * clean
    if mode == "set":
        return float(value)
    raise ValueError(f"unknown mode {mode!r}; choose ablate, scale or set")


def compute_interventions(driver: Driver, graph_id: str, node_ids: list[str], mode: str, value: float | None = None,
                          *, top_k: int = 10, database: str | None = None) -> dict:
    """The frozen, edge-predicted and live effects of editing ``node_ids`` (features of the graph) on its
    targets, and the live top-logit changes. ValueError names what cannot be used."""
    import torch

    from workers.engine.interventions import frozen_values, live_values
    from workers.vocabulary import ids

    if not node_ids:
        raise ValueError("node_ids is empty: choose the features to intervene on")
    rc = recompute_graph(driver, graph_id, database=database)
    lin, trace, g, targets = rc.loaded.lin, rc.trace, rc.graph, rc.targets
    edits: dict[str, float] = {}
    rows = []
    for node in dict.fromkeys(node_ids):
        if not node.startswith("feat:"):
            raise ValueError(f"node {node!r} is not a feature: interventions edit feature activations")
        try:
            clean = float(g.activation[g.index(node)])
        except KeyError:
            raise ValueError(f"node {node!r} is not active in graph {graph_id!r}") from None
        edits[node] = new_value(mode, clean, value)
        rows.append({"node_id": node, "clean_activation": clean, "new_activation": edits[node]})
    frozen = frozen_values(lin, trace, targets, [{}, edits]).double()
    # The live model reads targets at the unembedding only (a local circuit's feature target has no live value).
    live = live_values(lin, trace, targets, [{}, edits]).double() if all(t.tensor == tn.FINAL for t in targets) else None
    out_targets = []
    for j, t in enumerate(targets):
        tid = t.node_id
        predicted = sum((edits[s] / r["clean_activation"] - 1.0) * g.edge(tid, s)
                        for s, r in zip(edits, rows, strict=True))
        out_targets.append({"node_id": tid, "label": t.label or tid, "clean": float(frozen[0, j]),
                            "frozen_change": float(frozen[1, j] - frozen[0, j]), "from_edges": float(predicted),
                            "live_change": None if live is None else float(live[1, j] - live[0, j])})
    pos = targets[0].pos if targets else -1
    site_edits: dict[tuple[int, str], list[tuple[int, int, float]]] = {}
    for node, v in edits.items():
        p = ids.parse(node)
        site_edits.setdefault((p.layer, p.site), []).append((p.pos, p.feature, v))
    with torch.no_grad():
        before = lin.live_forward(trace.input_ids, {}, errors=trace)[pos].double()
        after = lin.live_forward(trace.input_ids, site_edits, errors=trace)[pos].double()
    delta = after - before
    k = min(int(top_k), delta.numel())
    tok = rc.loaded.tokenizer
    changes = [{"token_id": int(i), "token": tok.decode([int(i)]) if tok is not None else None,
                "before": float(before[i]), "after": float(after[i]), "change": float(delta[i])}
               for i in delta.abs().topk(k).indices]
    return {"graph_id": graph_id, "mode": mode, "value": value, "edits": rows, "targets": out_targets,
            "position": int(pos) if pos >= 0 else int(trace.n_pos) - 1, "top_logit_changes": changes}
