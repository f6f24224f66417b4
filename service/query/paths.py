"""Strongest paths: between two nodes of one graph (ATTR edges) or two features of a corpus (AGG edges).

A path's strength is the product of its edge weights (signed; ranked by absolute value). Plain Cypher
over variable-length patterns enumerates every path and explodes on dense graphs, so this is a beam
search in Python over bounded neighbourhood queries: one query per hop fetches the out-edges of the
current frontier (at most ``fanout`` per node, strongest |w| first); partial paths are ranked by
|product| and only the best ``beam`` are extended. Paths are simple (no repeated node) and have at most
``max_hops`` edges. With ``beam`` and ``fanout`` at least the number of candidates the search is exhaustive
(the tests check it against brute-force enumeration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from neo4j import Driver

from workers.vocabulary.ids import node_uid

MAX_HOPS_LIMIT = 8

# Out-edges of a graph's frontier, strongest first per node.
_GRAPH_OUT = """
UNWIND $uids AS uid
MATCH (a:Node {uid: uid})-[r:ATTR]->(b:Node)
WHERE abs(r.w) >= $min_abs_w
WITH a, b, r ORDER BY abs(r.w) DESC, b.node_id ASC
WITH a, collect({dst: b.node_id, w: r.w})[..$fanout] AS out
RETURN a.node_id AS src, out
"""

# Normalised aggregate out-edges (service/query/global_circuits.py: sum_w / source activation mass).
_FEATURE_OUT = """
UNWIND $fkeys AS fk
MATCH (a:Feature {fkey: fk})-[e:AGG {corpus: $corpus_id}]->(b:Feature)
CALL (a) {
  OPTIONAL MATCH (a)-[o:OCCURS {corpus: $corpus_id}]->(:Corpus) RETURN sum(o.sum_act) AS mass
}
WITH a, b, CASE WHEN mass <> 0 THEN e.sum_w / mass ELSE null END AS w
WHERE w IS NOT NULL AND abs(w) >= $min_abs_w
WITH a, b, w ORDER BY abs(w) DESC, b.fkey ASC
WITH a, collect({dst: b.fkey, w: w})[..$fanout] AS out
RETURN a.fkey AS src, out
"""


@dataclass(frozen=True)
class WeightedPath:
    nodes: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def product(self) -> float:
        p = 1.0
        for w in self.weights:
            p *= w
        return p

    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "weights": list(self.weights), "product": self.product}


def _rank(p: WeightedPath) -> tuple:
    return (-abs(p.product), p.nodes)


def beam_search(source: str, target: str, out_edges: Callable[[list[str]], dict[str, list[tuple[str, float]]]],
                *, max_hops: int, beam: int, k: int) -> list[WeightedPath]:
    """Top-``k`` simple paths source -> target by |product of weights| (ties by node sequence).

    ``out_edges(frontier)`` returns, per frontier node, its (bounded) out-edges ``(dst, w)``.
    """
    if not 1 <= max_hops <= MAX_HOPS_LIMIT:
        raise ValueError(f"max_hops must be between 1 and {MAX_HOPS_LIMIT}, not {max_hops}")
    if beam < 1 or k < 1:
        raise ValueError("beam and k must be >= 1")
    partial = [WeightedPath((source,), ())]
    done: list[WeightedPath] = []
    for _ in range(max_hops):
        frontier = sorted({p.nodes[-1] for p in partial})
        if not frontier:
            break
        out = out_edges(frontier)
        extended: list[WeightedPath] = []
        for p in partial:
            for dst, w in out.get(p.nodes[-1], []):
                if dst in p.nodes:
                    continue
                q = WeightedPath(p.nodes + (dst,), p.weights + (float(w),))
                (done if dst == target else extended).append(q)
        extended.sort(key=_rank)
        partial = extended[:beam]
    done.sort(key=_rank)
    return done[:k]


def graph_paths(driver: Driver, graph_id: str, source: str, target: str, *, max_hops: int = 4, beam: int = 64,
                k: int = 10, fanout: int = 32, min_abs_w: float = 0.0, database: str | None = None) -> list[WeightedPath]:
    """Strongest paths between two nodes (engine node ids) of one stored graph."""
    def out_edges(frontier: list[str]) -> dict[str, list[tuple[str, float]]]:
        records, _, _ = driver.execute_query(
            _GRAPH_OUT, uids=[node_uid(graph_id, n) for n in frontier], min_abs_w=float(min_abs_w), fanout=int(fanout),
            database_=database, routing_="r",
        )
        return {r["src"]: [(e["dst"], e["w"]) for e in r["out"]] for r in records}

    return beam_search(source, target, out_edges, max_hops=max_hops, beam=beam, k=k)


def feature_paths(driver: Driver, corpus_id: str, source: str, target: str, *, max_hops: int = 3, beam: int = 64,
                  k: int = 10, fanout: int = 32, min_abs_w: float = 0.0, database: str | None = None) -> list[WeightedPath]:
    """Strongest paths between two features over one corpus' normalised aggregate edges."""
    def out_edges(frontier: list[str]) -> dict[str, list[tuple[str, float]]]:
        records, _, _ = driver.execute_query(
            _FEATURE_OUT, fkeys=frontier, corpus_id=corpus_id, min_abs_w=float(min_abs_w), fanout=int(fanout),
            database_=database, routing_="r",
        )
        return {r["src"]: [(e["dst"], e["w"]) for e in r["out"]] for r in records}

    return beam_search(source, target, out_edges, max_hops=max_hops, beam=beam, k=k)
