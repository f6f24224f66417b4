"""Attribution shares of stored graphs (issue #16): how much of a target each token position and each feature
carries, read from the graph's stored ATTR edges alone.

A stored row sums to its node's value: a target's in-edges to the target's value, an expanded feature's to its
activation (circuit-tracer's convention; ``prune: false`` stores every row whole). The amount of the target
carried by a node, ``x``, is then defined top-down: ``x[target] = value`` and, for every node ``s``,

    x[s] = Σ_t x[t] · A[t, s] / value(t)        over the rows t that s feeds (targets, expanded features),

so the leaves (embeddings, errors, unexpanded features, biases: nodes without a row) sum to the target's value,
and a feature's ``x`` is its attribution through every path (the hierarchical attribution of Ge et al. 2024 with
τ = −∞, ``workers/engine/hierarchical.py``, without the model). A position's share is the sum of its leaves' ``x``;
the bias leaf has no position. ``best`` is the position with the largest positive share other than the last
(the IO-position check of ``workers/engine/evaluation.position_shares``). On a pruned graph the same sums run
over the kept edges only (``complete`` says whether the graph was stored whole).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
from neo4j import Driver

_GRAPH = """
MATCH (g:Graph {graph_id: $g}) WHERE g.status = 'complete'
RETURN g.target AS target, g.settings AS settings, g.metrics AS metrics, g.prompt_id AS prompt_id,
       g.corpus_id AS corpus_id
"""
_NODES = """
MATCH (n:Node {graph_id: $g})
RETURN n.node_id AS node_id, n.kind AS kind, n.pos AS pos, n.fkey AS fkey, n.activation AS activation
"""
_EDGES = """
MATCH (s:Node {graph_id: $g})-[e:ATTR]->(t:Node)
RETURN s.node_id AS s, t.node_id AS t, e.w AS w
"""


def graph_shares(driver: Driver, graph_id: str, target: int = 0, top_features: int = 20, *,
                 database: str | None = None) -> dict:
    """The shares of target number ``target`` (in the graph's submitted order) of one stored graph: per position,
    the bias leaf, per leaf kind, ``best``, and the ``top_features`` features carrying most of it (by |x|)."""
    recs = driver.execute_query(_GRAPH, g=graph_id, database_=database, routing_="r").records
    if not recs:
        raise LookupError(f"no complete graph {graph_id!r}")
    g = recs[0]
    targets = json.loads(g["target"])["targets"]
    if not 0 <= target < len(targets):
        raise ValueError(f"graph {graph_id!r} has {len(targets)} targets; target {target} does not exist")
    tgt = targets[target]
    nodes = driver.execute_query(_NODES, g=graph_id, database_=database, routing_="r").records
    edges = driver.execute_query(_EDGES, g=graph_id, database_=database, routing_="r").records
    index = {r["node_id"]: i for i, r in enumerate(nodes)}
    if tgt["node_id"] not in index:
        raise ValueError(f"graph {graph_id!r} stores no node for its target {tgt['node_id']!r}")
    src = np.array([index[e["s"]] for e in edges], dtype=np.int64)
    dst = np.array([index[e["t"]] for e in edges], dtype=np.int64)
    w = np.array([e["w"] for e in edges], dtype=np.float64)
    n = len(nodes)
    has_row = np.zeros(n, dtype=bool)
    has_row[dst] = True
    # the value each row sums to: a feature's activation, a target's value (only this target's row is followed)
    value = np.array([r["activation"] if r["kind"] == "feature" and r["activation"] else 0.0 for r in nodes])
    t = index[tgt["node_id"]]
    value[t] = tgt["value"]
    follow = has_row & (value != 0) & ((np.array([r["kind"] for r in nodes]) == "feature") | (np.arange(n) == t))
    seed = np.zeros(n)
    seed[t] = tgt["value"]
    x = seed.copy()
    for _ in range(n + 1):  # a DAG: exact after (its depth + 1) sweeps
        ratio = np.where(follow, x / np.where(value != 0, value, 1.0), 0.0)
        new = seed + np.bincount(src, weights=w * ratio[dst], minlength=n)
        new[t] = tgt["value"]
        if np.array_equal(new, x):
            break
        x = new
    else:
        raise RuntimeError(f"graph {graph_id!r}: the attribution did not settle (a cycle in the stored edges?)")
    leaf = ~has_row & (np.arange(n) != t)
    # leaves downstream of the target (other targets' nodes) carry none of it; keep only reached ones
    positions: dict[int, float] = defaultdict(float)
    by_kind: dict[str, float] = defaultdict(float)
    bias = 0.0
    for i in np.nonzero(leaf & (x != 0))[0]:
        r = nodes[i]
        by_kind[r["kind"]] += x[i]
        if r["pos"] is None:
            bias += x[i]
        else:
            positions[int(r["pos"])] += x[i]
    last = max((r["pos"] for r in nodes if r["pos"] is not None), default=-1)
    cands = {p: s for p, s in positions.items() if p != last and s > 0}
    feats = [i for i in range(n) if nodes[i]["kind"] == "feature" and x[i] != 0]
    feats.sort(key=lambda i: -abs(x[i]))
    settings = json.loads(g["settings"] or "{}")
    return {
        "graph_id": graph_id, "prompt_id": g["prompt_id"], "corpus_id": g["corpus_id"],
        "target": {"node_id": tgt["node_id"], "label": tgt.get("label", ""), "value": tgt["value"]},
        "complete": settings.get("prune") is False,
        "metrics": json.loads(g["metrics"] or "{}"),
        "positions": sorted([p, s] for p, s in positions.items()),
        "bias": bias, "by_kind": dict(by_kind), "last": last,
        "best": max(cands, key=cands.__getitem__) if cands else -1,
        "features": [{"node_id": nodes[i]["node_id"], "fkey": nodes[i]["fkey"], "pos": nodes[i]["pos"],
                      "activation": nodes[i]["activation"], "attribution": float(x[i])} for i in feats[:top_features]],
        "n_features": len(feats),
        "feature_total": float(sum(x[i] for i in feats)),
        "_all_features": [(nodes[i]["fkey"], float(x[i])) for i in feats],
    }


def attribution_shares(driver: Driver, graph_ids: list[str], target: int = 0, top_features: int = 20,
                       corpus_features: int = 50, *, database: str | None = None) -> dict:
    """:func:`graph_shares` of each graph, and over all of them each feature's summed attribution (``sum``),
    summed |attribution| and the number of graphs it carries some of the target in, ranked by |sum|."""
    graphs: list[dict] = []
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for gid in graph_ids:
        s = graph_shares(driver, gid, target, top_features, database=database)
        all_features = s.pop("_all_features")
        for fkey, a in all_features:
            totals[fkey][0] += a
            totals[fkey][1] += abs(a)
        for fkey in {f for f, _ in all_features}:
            totals[fkey][2] += 1
        graphs.append(s)
    ranked = sorted(totals.items(), key=lambda kv: (-abs(kv[1][0]), kv[0]))
    return {"n_graphs": len(graphs), "target": target, "graphs": graphs,
            "features": [{"fkey": k, "sum": v[0], "sum_abs": v[1], "n_graphs": int(v[2])}
                         for k, v in ranked[:corpus_features]]}
