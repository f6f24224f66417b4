"""Cross-prompt analyses of stored circuits (issue #6, item 5).

A prompt's circuit here is its stored graph's feature instances with ``influence >= min_influence`` (a
missing influence counts as 0); a feature belongs to it when any of its instances does. Feature-level edges
are ATTR edges between two feature instances, keyed by (source fkey, target fkey) and summed per graph.
Graph sets are given by ``graph_ids`` or by a corpus (optionally a subset of its prompts); only complete
graphs count.
"""

from __future__ import annotations

import math
from itertools import combinations

from neo4j import Driver

_GRAPHS = """
MATCH (g:Graph) WHERE g.status = 'complete'
  AND ($graph_ids IS NULL OR g.graph_id IN $graph_ids)
  AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
  AND ($prompt_ids IS NULL OR g.prompt_id IN $prompt_ids)
RETURN g.graph_id AS graph_id ORDER BY graph_id
"""

_FEATURE_SETS = """
UNWIND $graph_ids AS gid
MATCH (n:Node {graph_id: gid, kind: 'feature'}) WHERE coalesce(n.influence, 0.0) >= $min_influence
RETURN gid AS graph_id, n.fkey AS fkey, max(n.activation) AS activation
"""

_FEATURE_EDGES = """
UNWIND $graph_ids AS gid
MATCH (a:Node {graph_id: gid, kind: 'feature'})-[r:ATTR]->(b:Node)
WHERE b.kind = 'feature' AND coalesce(a.influence, 0.0) >= $min_influence
  AND coalesce(b.influence, 0.0) >= $min_influence AND abs(r.w) >= $min_abs_w
RETURN gid AS graph_id, a.fkey AS source, b.fkey AS target, sum(r.w) AS w
"""


def select_graphs(driver: Driver, *, graph_ids: list[str] | None = None, corpus_id: str | None = None,
                  prompt_ids: list[str] | None = None, database: str | None = None) -> list[str]:
    if graph_ids is None and corpus_id is None:
        raise ValueError("give graph_ids or a corpus_id (optionally with prompt_ids)")
    records, _, _ = driver.execute_query(_GRAPHS, graph_ids=graph_ids, corpus_id=corpus_id, prompt_ids=prompt_ids,
                                         database_=database, routing_="r")
    return [r["graph_id"] for r in records]


def feature_sets(driver: Driver, graph_ids: list[str], min_influence: float = 0.0, *,
                 database: str | None = None) -> dict[str, dict[str, float]]:
    """Per graph: {fkey: max activation over its kept instances}. Graphs with no kept feature map to {}."""
    out: dict[str, dict[str, float]] = {g: {} for g in graph_ids}
    records, _, _ = driver.execute_query(_FEATURE_SETS, graph_ids=graph_ids, min_influence=float(min_influence),
                                         database_=database, routing_="r")
    for r in records:
        out[r["graph_id"]][r["fkey"]] = r["activation"]
    return out


def feature_edges(driver: Driver, graph_ids: list[str], min_influence: float = 0.0, min_abs_w: float = 0.0, *,
                  database: str | None = None) -> dict[str, dict[tuple[str, str], float]]:
    """Per graph: {(source fkey, target fkey): summed w}."""
    out: dict[str, dict[tuple[str, str], float]] = {g: {} for g in graph_ids}
    records, _, _ = driver.execute_query(_FEATURE_EDGES, graph_ids=graph_ids, min_influence=float(min_influence),
                                         min_abs_w=float(min_abs_w), database_=database, routing_="r")
    for r in records:
        out[r["graph_id"]][(r["source"], r["target"])] = r["w"]
    return out


def recurring_features(driver: Driver, graph_ids: list[str], *, min_influence: float = 0.0, min_graphs: int = 1,
                       limit: int = 100, database: str | None = None) -> dict:
    """Features in the circuits of at least ``min_graphs`` of the graphs, most recurrent first (ties by fkey)."""
    sets = feature_sets(driver, graph_ids, min_influence, database=database)
    counts: dict[str, list[float]] = {}
    for feats in sets.values():
        for fkey, act in feats.items():
            counts.setdefault(fkey, []).append(act)
    rows = [{"fkey": f, "n_graphs": len(a), "fraction": len(a) / len(graph_ids), "mean_activation": sum(a) / len(a)}
            for f, a in counts.items() if len(a) >= min_graphs]
    rows.sort(key=lambda r: (-r["n_graphs"], r["fkey"]))
    return {"n_graphs": len(graph_ids), "features": rows[:limit]}


def consensus_circuit(driver: Driver, graph_ids: list[str], *, min_fraction: float = 0.5, min_influence: float = 0.0,
                      min_abs_w: float = 0.0, database: str | None = None) -> dict:
    """The features and feature-level edges present in at least ``min_fraction`` of the graphs' circuits
    (e.g. a template family such as all IOI prompts), with mean activation / mean weight where present."""
    if not 0 < min_fraction <= 1:
        raise ValueError("min_fraction must be in (0, 1]")
    n = len(graph_ids)
    # ceil with a tolerance: 0.7 * 10 is 7.000000000000001 in floats and must still mean 7 graphs.
    need = max(1, math.ceil(min_fraction * n - 1e-9))
    sets = feature_sets(driver, graph_ids, min_influence, database=database)
    edges = feature_edges(driver, graph_ids, min_influence, min_abs_w, database=database)
    feat_acts: dict[str, list[float]] = {}
    for feats in sets.values():
        for f, a in feats.items():
            feat_acts.setdefault(f, []).append(a)
    edge_ws: dict[tuple[str, str], list[float]] = {}
    for es in edges.values():
        for k, w in es.items():
            edge_ws.setdefault(k, []).append(w)
    features = sorted(({"fkey": f, "n_graphs": len(a), "mean_activation": sum(a) / len(a)}
                       for f, a in feat_acts.items() if len(a) >= need), key=lambda r: (-r["n_graphs"], r["fkey"]))
    links = sorted(({"source": s, "target": t, "n_graphs": len(w), "mean_w": sum(w) / len(w)}
                    for (s, t), w in edge_ws.items() if len(w) >= need),
                   key=lambda r: (-r["n_graphs"], -abs(r["mean_w"]), r["source"], r["target"]))
    return {"n_graphs": n, "min_graphs": need, "features": features, "links": links}


def circuit_difference(driver: Driver, graph_a: str, graph_b: str, *, min_influence: float = 0.0,
                       database: str | None = None) -> dict:
    """Features and feature-level edges only in A, only in B, and in both (with both values)."""
    sets = feature_sets(driver, [graph_a, graph_b], min_influence, database=database)
    edges = feature_edges(driver, [graph_a, graph_b], min_influence, database=database)
    fa, fb = sets[graph_a], sets[graph_b]
    ea, eb = edges[graph_a], edges[graph_b]
    return {
        "graph_a": graph_a, "graph_b": graph_b,
        "features_only_a": [{"fkey": f, "activation": fa[f]} for f in sorted(fa.keys() - fb.keys())],
        "features_only_b": [{"fkey": f, "activation": fb[f]} for f in sorted(fb.keys() - fa.keys())],
        "features_shared": [{"fkey": f, "activation_a": fa[f], "activation_b": fb[f]}
                            for f in sorted(fa.keys() & fb.keys())],
        "links_only_a": [{"source": s, "target": t, "w": ea[(s, t)]} for s, t in sorted(ea.keys() - eb.keys())],
        "links_only_b": [{"source": s, "target": t, "w": eb[(s, t)]} for s, t in sorted(eb.keys() - ea.keys())],
        "links_shared": [{"source": s, "target": t, "w_a": ea[(s, t)], "w_b": eb[(s, t)]}
                         for s, t in sorted(ea.keys() & eb.keys())],
        "jaccard": jaccard(set(fa), set(fb)),
    }


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B|; two empty circuits are identical (1.0)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def cluster_prompts(driver: Driver, graph_ids: list[str], *, threshold: float = 0.5, min_influence: float = 0.0,
                    database: str | None = None) -> dict:
    """Single-linkage clusters of graphs whose circuits' feature sets have Jaccard >= ``threshold``.

    Clusters are listed largest first (ties by first member); members sorted. O(n²) pairs: meant for up to
    a few thousand graphs per job.
    """
    sets = {g: set(f) for g, f in feature_sets(driver, graph_ids, min_influence, database=database).items()}
    parent = {g: g for g in graph_ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in combinations(graph_ids, 2):
        if jaccard(sets[a], sets[b]) >= threshold:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for g in graph_ids:
        groups.setdefault(find(g), []).append(g)
    clusters = sorted((sorted(m) for m in groups.values()), key=lambda m: (-len(m), m[0]))
    return {"threshold": threshold, "clusters": clusters}
