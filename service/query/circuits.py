"""A stored graph's circuit, with the pruning chosen at read time.

Stored graphs keep every node's influence (circuit-tracer's ``I``, ``workers/engine/pruning.py``) and every
edge's signed direct effect ``w``. A reader picks how much of it to see:

- nodes: every node whose kind is in ``keep_kinds`` (by default logits, targets and token embeddings, which
  circuit-tracer always keeps), plus the ``max_nodes`` other nodes of largest influence among those with
  ``influence >= node_threshold`` (a missing influence counts as 0). Ties are broken by ``node_id``.
- edges: ATTR edges between kept nodes with ``|w| >= edge_threshold``; the ``max_edges`` of largest ``|w|``
  (ties by source then target id).
- ``target`` (local circuit of a stored node, or an end-to-end circuit of one logit / target): only the
  nodes with a path of kept edges into ``target`` (its upstream cone), and the edges among them.

Only graphs whose status is ``complete`` are visible (the writer's protocol, ``workers/store/writer.py``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from neo4j import Driver

DEFAULT_KEEP_KINDS: tuple[str, ...] = ("logit", "target", "embedding")
NODE_FIELDS = ("node_id", "kind", "layer", "pos", "feature", "dictionary", "fkey", "activation", "influence",
               "token")


class GraphNotFound(LookupError):
    """No complete graph with this id."""


class NodeNotFound(LookupError):
    """The graph has no node with this id."""


@dataclass(frozen=True)
class Pruning:
    node_threshold: float = 0.0
    edge_threshold: float = 0.0
    max_nodes: int = 500
    max_edges: int = 5_000
    keep_kinds: tuple[str, ...] = DEFAULT_KEEP_KINDS
    target: str | None = None  # a node_id of the graph

    def __post_init__(self) -> None:
        if self.max_nodes < 0 or self.max_edges < 0:
            raise ValueError("max_nodes and max_edges must be >= 0")
        if self.node_threshold < 0 or self.edge_threshold < 0:
            raise ValueError("node_threshold and edge_threshold must be >= 0 (they compare with influence and |w|)")


@dataclass
class Circuit:
    graph: dict  # the Graph node's properties, JSON fields decoded
    nodes: list[dict]  # NODE_FIELDS each, ordered by node_id
    edges: list[dict]  # {source, target, weight}, ordered by |weight| desc, then source, target
    pruning: Pruning
    stats: dict = field(default_factory=dict)


_GRAPH = """
MATCH (g:Graph {graph_id: $graph_id}) WHERE g.status = 'complete'
RETURN g {.*} AS g
"""

# Always-kept kinds and the top nodes by influence, in one round trip. The node_graph_kind index serves the
# first part; the second scans the graph's nodes (node_graph_id index), a few thousand at most.
_NODES = """
CALL () {
  MATCH (n:Node {graph_id: $graph_id}) WHERE n.kind IN $keep_kinds
  RETURN n
  UNION
  MATCH (n:Node {graph_id: $graph_id})
  WHERE NOT n.kind IN $keep_kinds AND coalesce(n.influence, 0.0) >= $node_threshold
  WITH n ORDER BY coalesce(n.influence, 0.0) DESC, n.node_id ASC LIMIT $max_nodes
  RETURN n
}
RETURN n {.node_id, .kind, .layer, .pos, .feature, .dictionary, .fkey, .activation, .influence, .token} AS n
"""

# Edges among the kept nodes. Membership is a per-node predicate, not a list lookup: a node is kept when its
# kind is always kept, or it is the target, or it ranks within the top-k, i.e. its (influence desc, node_id
# asc) key is at or before the cut-off node's key. One scan of the graph's nodes and their out-edges.
_KEPT = """(x.kind IN $keep_kinds OR x.uid = $target_uid OR ($has_cut AND coalesce(x.influence, 0.0) >= $node_threshold
  AND (coalesce(x.influence, 0.0) > $cut_influence
       OR (coalesce(x.influence, 0.0) = $cut_influence AND x.node_id <= $cut_node_id))))"""
_EDGES = f"""
MATCH (a:Node {{graph_id: $graph_id}})-[r:ATTR]->(b:Node)
WHERE abs(r.w) >= $edge_threshold AND {_KEPT.replace("x.", "a.")} AND {_KEPT.replace("x.", "b.")}
WITH a.node_id AS source, b.node_id AS target, r.w AS weight
ORDER BY abs(weight) DESC, source ASC, target ASC
LIMIT $max_edges
RETURN source, target, weight
"""


# Local circuits: instead of shipping every kept edge, find the max_edges-th edge's sort key (one row), then
# walk the upstream cone of the target on the server, one hop per query, over edges at or before that key.
_EDGE_CUT = f"""
MATCH (a:Node {{graph_id: $graph_id}})-[r:ATTR]->(b:Node)
WHERE abs(r.w) >= $edge_threshold AND {_KEPT.replace("x.", "a.")} AND {_KEPT.replace("x.", "b.")}
WITH a.node_id AS source, b.node_id AS target, r.w AS weight
ORDER BY abs(weight) DESC, source ASC, target ASC
SKIP $max_edges - 1 LIMIT 1
RETURN source, target, abs(weight) AS abs_w
"""
_IN_EDGES = f"""
UNWIND $frontier AS uid
MATCH (a:Node)-[r:ATTR]->(b:Node {{uid: uid}})
WHERE abs(r.w) >= $edge_threshold AND {_KEPT.replace("x.", "a.")}
  AND (NOT $has_edge_cut OR abs(r.w) > $cut_abs_w OR (abs(r.w) = $cut_abs_w
       AND (a.node_id < $cut_source OR (a.node_id = $cut_source AND b.node_id <= $cut_target))))
RETURN a.node_id AS source, b.node_id AS target, r.w AS weight
"""


def _cone_edges(driver: Driver, graph_id: str, target: str, params: dict, database: str | None,
                graph_edges: int | None) -> list[dict]:
    """Kept edges (top max_edges by the circuit's edge order) with both ends in the target's upstream cone."""
    if params["max_edges"] == 0:
        return []
    cut: list = []
    if graph_edges is None or graph_edges > params["max_edges"]:  # otherwise no edge can be cut by rank
        cut, _, _ = driver.execute_query(_EDGE_CUT, **params, database_=database, routing_="r")
    cut_params = {"has_edge_cut": bool(cut), "cut_abs_w": cut[0]["abs_w"] if cut else 0.0,
                  "cut_source": cut[0]["source"] if cut else "", "cut_target": cut[0]["target"] if cut else ""}
    seen, frontier, edges = {target}, [target], []
    while frontier:
        rows, _, _ = driver.execute_query(_IN_EDGES, **params, **cut_params,
                                          frontier=[f"{graph_id}|{n}" for n in frontier], database_=database,
                                          routing_="r")
        frontier = []
        for r in rows:
            edges.append({"source": r["source"], "target": r["target"], "weight": r["weight"]})
            if r["source"] not in seen:
                seen.add(r["source"])
                frontier.append(r["source"])
    edges.sort(key=lambda e: (-abs(e["weight"]), e["source"], e["target"]))
    return edges


def _decode_graph(props: dict) -> dict:
    out = dict(props)
    for key in ("target", "settings", "metrics", "provenance"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    for key in ("created_at", "completed_at"):
        if key in out and out[key] is not None and not isinstance(out[key], str | int | float):
            out[key] = str(out[key])
    out.pop("_lock", None)
    return out


def get_graph(driver: Driver, graph_id: str, *, database: str | None = None) -> dict:
    """The Graph node's properties (JSON fields decoded); raises GraphNotFound unless it is complete."""
    records, _, _ = driver.execute_query(_GRAPH, graph_id=graph_id, database_=database, routing_="r")
    if not records:
        raise GraphNotFound(f"no complete graph {graph_id!r} (unknown id, or still being written)")
    return _decode_graph(records[0]["g"])


def upstream_cone(edges: list[dict], target: str) -> set[str]:
    """Node ids with a path of ``edges`` into ``target``, plus ``target`` itself."""
    into: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        into[e["target"]].append(e["source"])
    seen = {target}
    stack = [target]
    while stack:
        for s in into[stack.pop()]:
            if s not in seen:
                seen.add(s)
                stack.append(s)
    return seen


_NODE_PROPS = "n {.node_id, .kind, .layer, .pos, .feature, .dictionary, .fkey, .activation, .influence, .token}"

# The max_nodes-th ranked node (influence desc, node_id asc) among the candidates: the top-k cut-off.
_NODE_CUT = """
MATCH (n:Node {graph_id: $graph_id})
WHERE NOT n.kind IN $keep_kinds AND coalesce(n.influence, 0.0) >= $node_threshold
WITH n ORDER BY coalesce(n.influence, 0.0) DESC, n.node_id ASC SKIP $max_nodes - 1 LIMIT 1
RETURN coalesce(n.influence, 0.0) AS influence, n.node_id AS node_id
"""
_NODES_BY_UID = f"UNWIND $uids AS uid MATCH (n:Node {{uid: uid}}) RETURN {_NODE_PROPS} AS n"
_NO_RANK_LIMIT = -1.0e308  # every candidate's influence is above it: all pass the rank test


def _rank_cut(driver: Driver, pruning: Pruning, graph: dict, params: dict, database: str | None) -> tuple[bool, float, str]:
    """(has_cut, cut_influence, cut_node_id) for the _KEPT predicate, without fetching the nodes."""
    if pruning.max_nodes == 0:
        return False, 0.0, ""
    n_nodes = graph.get("n_nodes")
    if n_nodes is not None and n_nodes <= pruning.max_nodes:
        return True, _NO_RANK_LIMIT, ""
    rows, _, _ = driver.execute_query(_NODE_CUT, **params, max_nodes=int(pruning.max_nodes), database_=database,
                                      routing_="r")
    if not rows:  # fewer candidates than max_nodes
        return True, _NO_RANK_LIMIT, ""
    return True, float(rows[0]["influence"]), rows[0]["node_id"]


def circuit(driver: Driver, graph_id: str, pruning: Pruning | None = None, *, database: str | None = None) -> Circuit:
    """The circuit of one complete graph under ``pruning`` (module docstring for the exact rule).

    Without a target: the kept nodes, then the top edges among them. With a target: only the rank cut-offs
    are computed on the server, the upstream cone is walked hop by hop, and only the cone's nodes and edges
    travel to the client (a local circuit is usually a small part of its graph).
    """
    pruning = pruning or Pruning()
    graph = get_graph(driver, graph_id, database=database)
    params = {
        "graph_id": graph_id, "keep_kinds": list(pruning.keep_kinds),
        "target_uid": f"{graph_id}|{pruning.target}" if pruning.target else None,
        "node_threshold": float(pruning.node_threshold), "edge_threshold": float(pruning.edge_threshold),
        "max_edges": int(pruning.max_edges),
    }
    if pruning.target is None:
        records, _, _ = driver.execute_query(
            _NODES, graph_id=graph_id, keep_kinds=list(pruning.keep_kinds),
            node_threshold=float(pruning.node_threshold), max_nodes=int(pruning.max_nodes), database_=database,
            routing_="r",
        )
        nodes = {r["n"]["node_id"]: r["n"] for r in records}
        ranked = [n for n in nodes.values() if n["kind"] not in pruning.keep_kinds]
        # The last ranked node kept.
        cut = max(ranked, key=lambda n: (-(n["influence"] or 0.0), n["node_id"])) if ranked else None
        params.update(has_cut=cut is not None, cut_influence=float(cut["influence"] or 0.0) if cut else 0.0,
                      cut_node_id=cut["node_id"] if cut else "")
        records, _, _ = driver.execute_query(_EDGES, **params, database_=database, routing_="r")
        edges = [{"source": r["source"], "target": r["target"], "weight": r["weight"]} for r in records]
    else:
        has_cut, cut_influence, cut_node_id = _rank_cut(driver, pruning, graph, params, database)
        params.update(has_cut=has_cut, cut_influence=cut_influence, cut_node_id=cut_node_id)
        edges = _cone_edges(driver, graph_id, pruning.target, params, database, graph.get("n_edges"))
        cone = upstream_cone(edges, pruning.target)
        records, _, _ = driver.execute_query(_NODES_BY_UID, uids=[f"{graph_id}|{n}" for n in sorted(cone)],
                                             database_=database, routing_="r")
        nodes = {r["n"]["node_id"]: r["n"] for r in records}
        if pruning.target not in nodes:
            raise NodeNotFound(f"graph {graph_id!r} has no node {pruning.target!r}")
    ordered = [nodes[k] for k in sorted(nodes)]
    return Circuit(graph=graph, nodes=ordered, edges=edges, pruning=pruning,
                   stats={"n_nodes": len(ordered), "n_edges": len(edges),
                          "graph_n_nodes": graph.get("n_nodes"), "graph_n_edges": graph.get("n_edges")})


# -- Neuronpedia graph JSON (schema_version 1; shared/REFERENCE.md) -----------------------------------------

_FEATURE_TYPE = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "embedding": "embedding",
                 "pos_embedding": "embedding", "logit": "logit", "target": "logit", "bias": "bias"}


def to_neuronpedia(c: Circuit, slug: str | None = None) -> dict:
    """The circuit as Neuronpedia graph JSON. Node ids are the engine's typed ids (collision-free)."""
    prov = c.graph.get("provenance") or {}
    target = c.graph.get("target") or {}
    layers = [n["layer"] for n in c.nodes if n.get("layer") is not None]
    n_layers = int(prov.get("n_layers", (max(layers) + 1) if layers else 0))
    probs: dict[str, float] = {}
    for t in target.get("targets", []) if isinstance(target, dict) else []:
        if isinstance(t, dict) and "node_id" in t:
            probs[t["node_id"]] = float(t.get("token_prob") or 0.0)
    nodes = []
    for n in c.nodes:
        kind = n["kind"]
        if kind in ("embedding", "pos_embedding"):
            layer = "E"
        elif kind in ("logit", "target"):
            layer = str(n_layers)
        else:
            layer = str(n["layer"])
        nodes.append({
            "node_id": n["node_id"],
            "feature": n["feature"] if kind == "feature" else None,
            "layer": layer,
            "ctx_idx": n["pos"] if n["pos"] is not None else 0,
            "feature_type": _FEATURE_TYPE.get(kind, kind),
            "token_prob": probs.get(n["node_id"], 0.0),
            "is_target_logit": kind in ("logit", "target") and (not probs or n["node_id"] in probs),
            "influence": n["influence"],
            "activation": n["activation"] if kind == "feature" else None,
            "clerp": n["fkey"] or n["token"] or n["node_id"],
        })
    p = c.pruning
    return {
        "metadata": {
            "slug": slug or c.graph["graph_id"],
            "scan": str(c.graph.get("model", "")),
            "prompt": str(prov.get("prompt", "")),
            "prompt_tokens": list(prov.get("token_strings") or [str(t) for t in prov.get("tokens", [])]),
            "node_threshold": p.node_threshold,
            "schema_version": 1,
            "info": {"generator": {"name": "circuit-atlas"}, "graph_id": c.graph["graph_id"],
                     "corpus_id": c.graph.get("corpus_id"), "dictionary_set": c.graph.get("dictionary_set")},
            "pruning_settings": {"node_threshold": p.node_threshold, "edge_threshold": p.edge_threshold,
                                 "max_nodes": p.max_nodes, "max_edges": p.max_edges, "target": p.target},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": p.target or "",
                    "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": e["source"], "target": e["target"], "weight": e["weight"]} for e in c.edges],
    }


_LIST = """
MATCH (g:Graph) WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
RETURN g.graph_id AS graph_id, g.corpus_id AS corpus_id, g.prompt_id AS prompt_id, g.model AS model,
       g.n_nodes AS n_nodes, g.n_edges AS n_edges
ORDER BY graph_id SKIP $offset LIMIT $limit
"""


def list_graphs(driver: Driver, corpus_id: str | None, offset: int, limit: int, *,
                database: str | None = None) -> list[dict]:
    """Complete graphs, optionally of one corpus, ordered by graph_id (stable pages)."""
    records, _, _ = driver.execute_query(_LIST, corpus_id=corpus_id, offset=offset, limit=limit,
                                         database_=database, routing_="r")
    return [dict(r) for r in records]
