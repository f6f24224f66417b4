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
from dataclasses import dataclass, field

from neo4j import Driver

from service.query.labels import labels_of
from workers import neuronpedia
from workers.errors import NotFound
from workers.vocabulary.ids import node_uid
from workers.vocabulary.kinds import DEFAULT_KEEP_KINDS

NODE_FIELDS = ("node_id", "kind", "layer", "pos", "feature", "dictionary", "fkey", "activation", "influence",
               "token")


class GraphNotFound(NotFound):
    """No complete graph with this id."""


class NodeNotFound(NotFound):
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
    nodes: list[dict]  # NODE_FIELDS each and the feature's label (service/query/labels.py), ordered by node_id
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


def _kept(x: str, cut: str) -> str:
    """Cypher: node ``x`` is kept, given the rank cut-off ``cut`` = [influence, node_id] of the max_nodes-th
    ranked node (null: fewer candidates than max_nodes, no rank limit)."""
    inf = f"coalesce({x}.influence, 0.0)"
    return (f"({x}.kind IN $keep_kinds OR {x}.uid = $target_uid OR ($max_nodes > 0 AND {inf} >= $node_threshold "
            f"AND ({cut} IS NULL OR {inf} > {cut}[0] OR ({inf} = {cut}[0] AND {x}.node_id <= {cut}[1]))))")


def _edge_kept(a: str, r: str, b: str, cut: str) -> str:
    """Cypher: edge ``a-[r]->b`` clears the threshold and ranks within the top max_edges, given ``cut`` =
    [|w|, source, target] of the max_edges-th edge (null: no rank limit). It holds no test of a parameter alone
    (``$max_edges > 0``): in a quantified path that stops the planner from using a pruning expand."""
    return (f"(abs({r}.w) >= $edge_threshold AND ({cut} IS NULL OR abs({r}.w) > {cut}[0] OR (abs({r}.w) = {cut}[0] "
            f"AND ({a}.node_id < {cut}[1] OR ({a}.node_id = {cut}[1] AND {b}.node_id <= {cut}[2])))))")


# Edges among the kept nodes. Membership is a per-node predicate, not a list lookup: a node is kept when its
# kind is always kept, or it is the target, or it ranks within the top-k, i.e. its (influence desc, node_id
# asc) key is at or before the cut-off node's key. One scan of the graph's nodes and their out-edges.
_EDGES = f"""
MATCH (a:Node {{graph_id: $graph_id}})-[r:ATTR]->(b:Node)
WHERE abs(r.w) >= $edge_threshold AND {_kept("a", "$ncut")} AND {_kept("b", "$ncut")}
WITH a.node_id AS source, b.node_id AS target, r.w AS weight
ORDER BY abs(weight) DESC, source ASC, target ASC
LIMIT $max_edges
RETURN source, target, weight
"""


# Local circuits in one round trip (PROFILEd on 5M edges, bench/README.md). The rank cut-offs are computed on the
# server, and only when the graph is larger than max_nodes / max_edges: the UNWIND of an empty list stops the
# subquery before its index seek (a WHERE on the parameters alone is planned after the seek). The upstream
# cone is a quantified path whose predicates the planner pushes into a pruning breadth-first expand (each
# node visited once, cycles included). The cone's kept in-edges come back as three parallel lists in one
# record (the driver's cost is per record), with only the node properties a circuit shows.
_LOCAL = f"""
MATCH (g:Graph {{graph_id: $graph_id}}) WHERE g.status = 'complete'
OPTIONAL MATCH (t:Node {{uid: $target_uid}})
CALL (g) {{
  UNWIND CASE WHEN $max_nodes > 0 AND coalesce(g.n_nodes, $max_nodes + 1) > $max_nodes THEN [g.graph_id]
              ELSE [] END AS gid
  MATCH (n:Node {{graph_id: gid}})
  WHERE NOT n.kind IN $keep_kinds AND coalesce(n.influence, 0.0) >= $node_threshold
  WITH n ORDER BY coalesce(n.influence, 0.0) DESC, n.node_id ASC SKIP $skip_nodes LIMIT 1
  RETURN collect([coalesce(n.influence, 0.0), n.node_id]) AS node_cuts
}}
WITH g, t, node_cuts[0] AS ncut
CALL (g, ncut) {{
  UNWIND CASE WHEN $max_edges > 0 AND coalesce(g.n_edges, $max_edges + 1) > $max_edges THEN [g.graph_id]
              ELSE [] END AS gid
  MATCH (a:Node {{graph_id: gid}})-[r:ATTR]->(b:Node)
  WHERE abs(r.w) >= $edge_threshold AND {_kept("a", "ncut")} AND {_kept("b", "ncut")}
  WITH a.node_id AS s, b.node_id AS d, abs(r.w) AS aw ORDER BY aw DESC, s ASC, d ASC SKIP $skip_edges LIMIT 1
  RETURN collect([aw, s, d]) AS edge_cuts
}}
WITH g, t, ncut, edge_cuts[0] AS ecut
CALL (t, ncut, ecut) {{
  UNWIND CASE WHEN $max_edges > 0 AND t IS NOT NULL THEN [t] ELSE [] END AS t0
  MATCH (t0) ((b)<-[r:ATTR]-(a) WHERE {_edge_kept("a", "r", "b", "ecut")} AND {_kept("a", "ncut")}){{1,}} (x)
  RETURN collect(DISTINCT x) AS up
}}
WITH g, t, ncut, ecut, CASE WHEN t IS NULL THEN [] WHEN t IN up THEN up ELSE up + t END AS cone
CALL (cone, ncut, ecut) {{
  UNWIND CASE WHEN $max_edges > 0 THEN cone ELSE [] END AS b
  MATCH (a:Node)-[r:ATTR]->(b)
  WHERE {_edge_kept("a", "r", "b", "ecut")} AND {_kept("a", "ncut")}
  RETURN collect(a.node_id) AS src, collect(b.node_id) AS dst, collect(r.w) AS w
}}
RETURN g {{.*}} AS g, t IS NOT NULL AS found, [n IN cone | n {{{", ".join("." + f for f in NODE_FIELDS)}}}] AS nodes,
       src, dst, w
"""


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


def circuit(driver: Driver, graph_id: str, pruning: Pruning | None = None, *, database: str | None = None) -> Circuit:
    """The circuit of one complete graph under ``pruning`` (module docstring for the exact rule).

    Without a target: the kept nodes, then the top edges among them. With a target (a local circuit, usually
    a small part of its graph): one query computes the rank cut-offs, walks the upstream cone and returns
    only the cone's nodes and edges.
    """
    pruning = pruning or Pruning()
    params = {
        "graph_id": graph_id, "keep_kinds": list(pruning.keep_kinds),
        "target_uid": node_uid(graph_id, pruning.target) if pruning.target else None,
        "node_threshold": float(pruning.node_threshold), "edge_threshold": float(pruning.edge_threshold),
        "max_nodes": int(pruning.max_nodes), "max_edges": int(pruning.max_edges),
    }
    if pruning.target is None:
        graph = get_graph(driver, graph_id, database=database)
        records, _, _ = driver.execute_query(_NODES, **params, database_=database, routing_="r")
        nodes = {r["n"]["node_id"]: r["n"] for r in records}
        ranked = [n for n in nodes.values() if n["kind"] not in pruning.keep_kinds]
        # The last ranked node kept (None: no ranked node, so no node passes the rank test).
        cut = max(ranked, key=lambda n: (-(n["influence"] or 0.0), n["node_id"])) if ranked else None
        records, _, _ = driver.execute_query(
            _EDGES, **{**params, "max_nodes": params["max_nodes"] if cut else 0},
            ncut=[float(cut["influence"] or 0.0), cut["node_id"]] if cut else None, database_=database, routing_="r")
        edges = [{"source": r["source"], "target": r["target"], "weight": r["weight"]} for r in records]
    else:
        records, _, _ = driver.execute_query(
            _LOCAL, **params, skip_nodes=max(0, pruning.max_nodes - 1), skip_edges=max(0, pruning.max_edges - 1),
            database_=database, routing_="r")
        if not records:
            raise GraphNotFound(f"no complete graph {graph_id!r} (unknown id, or still being written)")
        row = records[0]
        if not row["found"]:
            raise NodeNotFound(f"graph {graph_id!r} has no node {pruning.target!r}")
        graph = _decode_graph(row["g"])
        nodes = {n["node_id"]: n for n in row["nodes"]}
        edges = [{"source": s, "target": t, "weight": w} for s, t, w in zip(row["src"], row["dst"], row["w"], strict=True)]
        edges.sort(key=lambda e: (-abs(e["weight"]), e["source"], e["target"]))
    ordered = [nodes[k] for k in sorted(nodes)]
    labels = labels_of(driver, [n["fkey"] for n in ordered if n.get("fkey")], database=database)
    for n in ordered:
        n["label"] = labels.get(n.get("fkey"))
    return Circuit(graph=graph, nodes=ordered, edges=edges, pruning=pruning,
                   stats={"n_nodes": len(ordered), "n_edges": len(edges),
                          "graph_n_nodes": graph.get("n_nodes"), "graph_n_edges": graph.get("n_edges")})


# -- Neuronpedia graph JSON (schema_version 1; the exporter: workers/neuronpedia.py) ---------------------------

def to_neuronpedia(c: Circuit, slug: str | None = None) -> dict:
    """The circuit as Neuronpedia graph JSON. Node ids are the engine's typed ids (collision-free)."""
    prov = c.graph.get("provenance") or {}
    target = c.graph.get("target") or {}
    layers = [n["layer"] for n in c.nodes if n.get("layer") is not None]
    n_layers = int(prov.get("n_layers", (max(layers) + 1) if layers else 0))
    targets: dict[str, float | None] | None = None
    listed = target.get("targets") if isinstance(target, dict) else None
    if isinstance(listed, list):
        # an empty list says nothing: every logit / target node then counts as a target
        targets = {t["node_id"]: t.get("token_prob") for t in listed if isinstance(t, dict) and "node_id" in t} or None
    dset = str(c.graph.get("dictionary_set") or "")
    p = c.pruning
    return neuronpedia.export(
        c.nodes, [(e["source"], e["target"], e["weight"]) for e in c.edges],
        slug=slug or c.graph["graph_id"], scan=str(c.graph.get("model", "")), prompt=str(prov.get("prompt", "")),
        prompt_tokens=list(prov.get("token_strings") or [str(t) for t in prov.get("tokens", [])]),
        n_layers=n_layers, targets=targets, node_threshold=p.node_threshold, clicked=p.target or "",
        transcoder_list=neuronpedia.transcoder_list(dset, [n["dictionary"] for n in c.nodes
                                                           if n["kind"] == "feature" and n.get("dictionary")]),
        info={"generator": {"name": "circuit-atlas"}, "graph_id": c.graph["graph_id"],
              "corpus_id": c.graph.get("corpus_id"), "dictionary_set": c.graph.get("dictionary_set")},
        pruning_settings={"node_threshold": p.node_threshold, "edge_threshold": p.edge_threshold,
                          "max_nodes": p.max_nodes, "max_edges": p.max_edges, "target": p.target},
    )


# The prompt's text is its (:Prompt)'s (graphs the pipeline made); a graph written outside the pipeline has
# none, so its text comes from its provenance (decoded below) and a text filter never matches it.
_LIST = """
MATCH (g:Graph) WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
  AND ($model IS NULL OR g.model = $model)
OPTIONAL MATCH (p:Prompt {prompt_id: g.prompt_id})
WITH g, p WHERE $text IS NULL OR toLower(p.text) CONTAINS $text
RETURN g.graph_id AS graph_id, g.corpus_id AS corpus_id, g.prompt_id AS prompt_id, g.model AS model,
       g.n_nodes AS n_nodes, g.n_edges AS n_edges, p.text AS prompt_text, g.target AS target,
       CASE WHEN p IS NULL THEN g.provenance END AS provenance
ORDER BY graph_id SKIP $offset LIMIT $limit
"""


def _target_labels(target: object) -> list[str]:
    decoded = _decode_graph({"target": target}).get("target")
    if not isinstance(decoded, dict):
        return []
    return [str(t.get("label") or t.get("node_id")) for t in decoded.get("targets", []) if isinstance(t, dict)]


def list_graphs(driver: Driver, corpus_id: str | None, offset: int, limit: int, *, model: str | None = None,
                text: str | None = None, database: str | None = None) -> list[dict]:
    """Complete graphs ordered by graph_id (stable pages), optionally of one corpus or model, or whose prompt
    contains ``text`` (case-insensitive); each with its prompt's text and its targets' labels."""
    records, _, _ = driver.execute_query(_LIST, corpus_id=corpus_id, model=model,
                                         text=text.lower() if text else None, offset=offset, limit=limit,
                                         database_=database, routing_="r")
    out = []
    for r in records:
        row = dict(r)
        provenance = _decode_graph({"provenance": row.pop("provenance")}).get("provenance")
        if row["prompt_text"] is None and isinstance(provenance, dict):
            row["prompt_text"] = provenance.get("prompt")
        row["targets"] = _target_labels(row.pop("target"))
        out.append(row)
    return out
