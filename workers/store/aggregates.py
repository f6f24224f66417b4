"""Corpus aggregates, folded per corpus by one writer at a time, every graph counted exactly once.

What is stored (DESIGN.md §3, read by ``service/query/global_circuits.py``):

- ``(:Feature)-[:AGG {corpus, sum_w, sum_abs_w, n}]->(:Feature)``: sums over every feature -> feature ATTR
  edge of the corpus's folded graphs (instances of one feature at several positions add up);
- ``(:Feature)-[:OCCURS {corpus, n, sum_act, n_graphs}]->(:Corpus)``: instances, activation mass and graphs.

Why a fold and not the graph writer: aggregates are increments shared by every graph of a corpus, so
applying them per graph (a MERGE per feature pair per graph, inside the graph's write) cost 3-6x the graph
itself. ``write_graph`` stores only its own nodes and edges (idempotent) and leaves the graph
``agg_state = 'pending'``; ``fold_corpus`` then adds the contributions of many pending graphs at once, summed
client-side (a pair shared by k graphs is written once, not k times), creating new pairs with CREATE and updating existing ones by id.

Protocol of one fold, all state in Neo4j on the corpus's ``(:AggFold {corpus_id})`` node:

1. lease + plan (one transaction, under the AggFold's write lock): take the corpus's folding lease (a random
   token and an expiry; a live lease of another folder raises ``FoldBusy``); if a fold is open (an earlier
   folder died) resume it, else record a new one: its id, its graphs (pending, complete, at most
   ``max_edges`` edges in all), chunk size; those graphs move to ``agg_state = 'folding'``.
2. read the fold's feature -> feature edges and feature instances back from the stored graphs, sum per
   pair and per feature, sort by key, and cut into chunks of ``chunk_pairs`` pairs. The fold's graphs are
   complete and immutable, so every attempt computes the same keys and the same partition (a hash of
   the keys and counts, recorded with the first chunk, checks it).
3. chunk k, one transaction: applies only if this folder still holds the lease, the fold is still open and
   its counter ``applied`` equals k; adds the chunk (CREATE for pairs new to the corpus, SET by relationship id
   for existing ones; the same for OCCURS) and advances the counter in the same transaction.
4. close (one transaction): the fold's graphs become ``'folded'``, the fold is cleared, the counters of
   folded graphs advance. Then the folder plans the next fold, until no graph is pending.

Exactly once: a chunk's increments and the counter move together or not at all (a SIGKILLed folder or a
restarted Neo4j loses only an uncommitted transaction); the guard and the counter sit on one node that
every chunk transaction write-locks first, so a duplicate or zombie folder applies nothing; a resumed fold
re-reads the same graphs and skips the chunks already counted; a graph joins exactly one fold (only
'pending' graphs are planned) and a fold is closed once.

What readers see while a corpus is still running: AGG and OCCURS sum the graphs folded so far (the
AggFold's ``graphs_folded``; ``aggregate_state``). During a fold, pairs of chunks already applied include
the fold's graphs and the others not yet: a fold is not an atomic snapshot. Once the job's state is final
(``complete``/``complete_with_failures``/``cancelled``; the job waits in ``aggregating`` for the last
fold), every complete graph of the corpus is folded and the aggregates are exact.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from neo4j import Driver, ManagedTransaction

FOLD_CHUNK_PAIRS = 20_000  # aggregate pairs per chunk transaction (bounded by Neo4j's transaction memory)
FOLD_MAX_EDGES = 1_000_000  # stored edges planned into one fold (bounds the folder's memory: ~0.3 GB at most;
# a single larger graph is folded alone)
FOLD_MAX_GRAPHS = 5_000
DEFAULT_FOLD_LEASE_S = 120.0


class FoldBusy(RuntimeError):
    """Another folder holds a live lease on this corpus's aggregates; retry after it is done or expired."""


class FoldConflict(RuntimeError):
    """The stored aggregates or graphs changed under an open fold (a graph of the fold deleted or rewritten,
    an AGG edge removed): the fold refuses to count anything rather than count it twice."""


@dataclass
class FoldResult:
    corpus_id: str
    folds: int = 0
    graphs: int = 0
    edges: int = 0  # stored edges of the folded graphs (all kinds), the unit of the ingest benchmark
    pairs_created: int = 0
    pairs_updated: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # plan, read, apply, close (seconds)


# -- 1. lease + plan ---------------------------------------------------------------------------------------

_LOCK_AND_LEASE = """
MERGE (f:AggFold {corpus_id: $corpus_id})
ON CREATE SET f.folds_done = 0, f.graphs_folded = 0
SET f._lock = true
WITH f, (f.writer IS NULL OR f.writer = $token OR f.lease_until < $now) AS mine
SET f.writer = CASE WHEN mine THEN $token ELSE f.writer END,
    f.lease_until = CASE WHEN mine THEN $now + $lease_s ELSE f.lease_until END
REMOVE f._lock
RETURN mine, f {.fold_id, .fold_graphs, .applied, .chunk_pairs} AS fold
"""

_PENDING = """
MATCH (g:Graph {corpus_id: $corpus_id, agg_state: 'pending'})
WHERE g.status = 'complete'
RETURN g.graph_id AS graph_id, g.n_edges AS n_edges
ORDER BY g.graph_id
LIMIT $max_graphs
"""

_OPEN_FOLD = """
MATCH (f:AggFold {corpus_id: $corpus_id})
SET f.fold_id = $fold_id, f.fold_graphs = $graphs, f.applied = 0, f.chunk_pairs = $chunk_pairs,
    f.key_hash = null, f.opened_at = $now
MERGE (c:Corpus {corpus_id: $corpus_id})
WITH f
UNWIND $graphs AS gid
MATCH (g:Graph {graph_id: gid})
SET g.agg_state = 'folding', g.agg_fold = $fold_id
RETURN count(g) AS n
"""

_RELEASE = "MATCH (f:AggFold {corpus_id: $corpus_id}) WHERE f.writer = $token SET f.writer = null, f.lease_until = null"


@dataclass(frozen=True)
class _Fold:
    fold_id: str
    graphs: list[str]
    applied: int
    chunk_pairs: int


def _plan(tx: ManagedTransaction, corpus_id: str, token: str, lease_s: float, max_edges: int,
          max_graphs: int, chunk_pairs: int) -> _Fold | None:
    """Take the lease and return the open fold (resumed) or a new one; None (lease released) when no graph
    is pending. Raises FoldBusy when another folder's lease is live."""
    now = time.time()
    rec = tx.run(_LOCK_AND_LEASE, corpus_id=corpus_id, token=token, now=now, lease_s=lease_s).single(strict=True)
    if not rec["mine"]:
        raise FoldBusy(f"corpus {corpus_id}: another worker is folding its aggregates")
    open_fold = rec["fold"]
    if open_fold["fold_id"] is not None:
        return _Fold(open_fold["fold_id"], list(open_fold["fold_graphs"]), open_fold["applied"], open_fold["chunk_pairs"])
    graphs, edges = [], 0
    for row in tx.run(_PENDING, corpus_id=corpus_id, max_graphs=max_graphs):
        if graphs and edges + (row["n_edges"] or 0) > max_edges:
            break
        graphs.append(row["graph_id"])
        edges += row["n_edges"] or 0
    if not graphs:
        tx.run(_RELEASE, corpus_id=corpus_id, token=token).consume()
        return None
    fold_id = uuid.uuid4().hex
    n = tx.run(_OPEN_FOLD, corpus_id=corpus_id, fold_id=fold_id, graphs=graphs, chunk_pairs=chunk_pairs,
               now=now).single(strict=True)["n"]
    if n != len(graphs):
        raise FoldConflict(f"corpus {corpus_id}: {len(graphs) - n} planned graphs vanished while planning")
    return _Fold(fold_id, graphs, 0, chunk_pairs)


# -- 2. read the contributions back from the stored graphs --------------------------------------------------

# Feature instances of one graph, and its feature -> feature edges grouped by source node, as internal ids:
# the fold maps ids to feature keys client-side instead of reading a key per edge.
# (n:Node:Feat {graph_id}) seeks the Node(graph_id) index; the Feat label of b is read from its node record.
_INSTANCES = """
MATCH (n:Node:Feat {graph_id: $graph_id})
RETURN collect(id(n)) AS ids, collect(n.fkey) AS fkeys, collect(coalesce(n.activation, 0.0)) AS acts
"""

_EDGES = """
MATCH (a:Node:Feat {graph_id: $graph_id})-[r:ATTR]->(b:Feat)
RETURN id(a) AS a, collect(id(b)) AS b, collect(r.w) AS w
"""

_GRAPH_EDGES = "UNWIND $graphs AS gid MATCH (g:Graph {graph_id: gid}) RETURN count(g) AS n, sum(g.n_edges) AS edges"


@dataclass
class Contribution:
    """The summed contribution of a fold's graphs. Features are indexed by their position in the sorted
    ``fkeys``; pairs are sorted by (source, target) index, so the chunking is deterministic."""

    fkeys: list[str]
    src: np.ndarray  # [P] int64 source feature index
    dst: np.ndarray  # [P] int64 target feature index
    sum_w: np.ndarray  # [P] float64
    sum_abs_w: np.ndarray  # [P] float64
    n: np.ndarray  # [P] int64 edges summed
    occ_n: np.ndarray  # [F] int64 instances per feature
    occ_act: np.ndarray  # [F] float64 activation mass per feature
    occ_graphs: np.ndarray  # [F] int64 graphs of the fold with the feature
    n_graphs: int
    n_edges: int

    def key_hash(self) -> str:
        """Hash of what must not change between attempts of one fold: the keys and the counts (float sums
        may differ in their last bits when a re-read returns edges in another order)."""
        h = hashlib.sha256("\n".join(self.fkeys).encode())
        for arr in (self.src, self.dst, self.n, self.occ_n, self.occ_graphs):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        return h.hexdigest()


def read_contribution(tx: ManagedTransaction, graphs: list[str]) -> Contribution:
    index: dict[str, int] = {}  # fkey -> provisional index (first seen); re-ranked by sorted key at the end
    inst: list[tuple[np.ndarray, np.ndarray]] = []  # per graph: (feature index per instance, activation)
    src_parts: list[np.ndarray] = []
    dst_parts: list[np.ndarray] = []
    w_parts: list[np.ndarray] = []
    for gid in graphs:
        nodes = tx.run(_INSTANCES, graph_id=gid).single(strict=True)
        ids = np.asarray(nodes["ids"], dtype=np.int64)
        fidx = np.fromiter((index.setdefault(k, len(index)) for k in nodes["fkeys"]), dtype=np.int64, count=len(ids))
        inst.append((fidx, np.asarray(nodes["acts"], dtype=np.float64)))
        order = np.argsort(ids)
        ids_sorted, fidx_sorted = ids[order], fidx[order]
        a_ids: list[int] = []
        b_ids: list[int] = []
        ws: list[float] = []
        for rec in tx.run(_EDGES, graph_id=gid):
            a_ids.extend([rec["a"]] * len(rec["b"]))
            b_ids.extend(rec["b"])
            ws.extend(rec["w"])
        for ends, parts in ((a_ids, src_parts), (b_ids, dst_parts)):
            arr = np.asarray(ends, dtype=np.int64)
            pos = np.searchsorted(ids_sorted, arr)
            if len(arr) and (pos.max() >= len(ids_sorted) or not np.array_equal(ids_sorted[pos], arr)):
                raise FoldConflict(f"graph {gid}: an edge ends at a feature node outside the graph")
            parts.append(fidx_sorted[pos])
        w_parts.append(np.asarray(ws, dtype=np.float64))
    stats = tx.run(_GRAPH_EDGES, graphs=graphs).single(strict=True)
    if stats["n"] != len(graphs):
        raise FoldConflict(f"{len(graphs) - stats['n']} graphs of the open fold no longer exist")

    fkeys = sorted(index)
    rank = np.empty(len(index), dtype=np.int64)
    rank[[index[k] for k in fkeys]] = np.arange(len(fkeys), dtype=np.int64)
    n_feat = max(1, len(fkeys))
    src = rank[np.concatenate(src_parts)] if src_parts else np.zeros(0, dtype=np.int64)
    dst = rank[np.concatenate(dst_parts)] if dst_parts else np.zeros(0, dtype=np.int64)
    w = np.concatenate(w_parts) if w_parts else np.zeros(0)
    keys, inverse = np.unique(src * n_feat + dst, return_inverse=True)
    occ_n = np.zeros(len(fkeys), dtype=np.int64)
    occ_act = np.zeros(len(fkeys))
    occ_graphs = np.zeros(len(fkeys), dtype=np.int64)
    for fidx, acts in inst:
        ranked = rank[fidx]
        occ_n += np.bincount(ranked, minlength=len(fkeys))
        occ_act += np.bincount(ranked, weights=acts, minlength=len(fkeys))
        occ_graphs[np.unique(ranked)] += 1
    return Contribution(
        fkeys=fkeys, src=keys // n_feat, dst=keys % n_feat,
        sum_w=np.bincount(inverse, weights=w, minlength=len(keys)),
        sum_abs_w=np.bincount(inverse, weights=np.abs(w), minlength=len(keys)),
        n=np.bincount(inverse, minlength=len(keys)).astype(np.int64),
        occ_n=occ_n, occ_act=occ_act, occ_graphs=occ_graphs, n_graphs=len(graphs), n_edges=stats["edges"] or 0)


_FEATURE_IDS = "UNWIND $fkeys AS k MATCH (f:Feature {fkey: k}) RETURN k, id(f) AS e"

_EXISTING_PAIRS = """
MATCH (a:Feature)-[e:AGG {corpus: $corpus_id}]->(b:Feature)
RETURN id(a) AS a, id(b) AS b, id(e) AS e
"""


_EXISTING_OCCURS = """
MATCH (x:Feature)-[o:OCCURS {corpus: $corpus_id}]->(:Corpus)
RETURN id(x) AS x, id(o) AS o
"""


def _feature_ids(tx: ManagedTransaction, fkeys: list[str]) -> dict[str, int]:
    ids = {rec["k"]: rec["e"] for rec in tx.run(_FEATURE_IDS, fkeys=fkeys)}
    missing = set(fkeys) - ids.keys()
    if missing:
        raise FoldConflict(f"{len(missing)} features of stored graphs have no (:Feature) node, e.g. {sorted(missing)[:3]}")
    return ids


def _existing_pairs(tx: ManagedTransaction, corpus_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source ids, target ids, AGG relationship ids) of the corpus's existing aggregate pairs (one scan of
    the AGG(corpus) relationship index per fold; a fresh corpus has none)."""
    rows = [(rec["a"], rec["b"], rec["e"]) for rec in tx.run(_EXISTING_PAIRS, corpus_id=corpus_id)]
    cols = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return cols[:, 0], cols[:, 1], cols[:, 2]


def _existing_occurs(tx: ManagedTransaction, corpus_id: str) -> dict[int, int]:
    """Feature id -> its OCCURS relationship id in this corpus."""
    return {rec["x"]: rec["o"] for rec in tx.run(_EXISTING_OCCURS, corpus_id=corpus_id)}


# -- 3. apply one chunk exactly once --------------------------------------------------------------------

_APPLY_CHUNK = """
MATCH (f:AggFold {corpus_id: $corpus_id})
SET f._lock = true
WITH f
WHERE f.writer = $token AND f.fold_id = $fold_id AND f.applied = $chunk AND coalesce(f.key_hash, $key_hash) = $key_hash
SET f.applied = $chunk + 1, f.key_hash = $key_hash, f.n_chunks = $n_chunks, f.lease_until = $now + $lease_s
WITH f
CALL (f) {
  UNWIND range(0, size($new_a) - 1) AS i
  MATCH (a:Feature) WHERE id(a) = $new_a[i]
  MATCH (b:Feature) WHERE id(b) = $new_b[i]
  CREATE (a)-[:AGG {corpus: $corpus_id, sum_w: $new_w[i], sum_abs_w: $new_aw[i], n: $new_n[i]}]->(b)
  RETURN count(*) AS created
}
CALL (f) {
  UNWIND range(0, size($upd_e) - 1) AS i
  MATCH ()-[e]->() WHERE id(e) = $upd_e[i]
  WITH e, i WHERE type(e) = 'AGG' AND e.corpus = $corpus_id
  SET e.sum_w = e.sum_w + $upd_w[i], e.sum_abs_w = e.sum_abs_w + $upd_aw[i], e.n = e.n + $upd_n[i]
  RETURN count(*) AS updated
}
CALL (f) {
  MATCH (c:Corpus {corpus_id: $corpus_id})
  UNWIND range(0, size($occ_new) - 1) AS i
  MATCH (x:Feature) WHERE id(x) = $occ_new[i]
  CREATE (x)-[:OCCURS {corpus: $corpus_id, n: $occ_new_n[i], sum_act: $occ_new_act[i], n_graphs: $occ_new_g[i]}]->(c)
  RETURN count(*) AS occurs_created
}
CALL (f) {
  UNWIND range(0, size($occ_upd) - 1) AS i
  MATCH ()-[o]->() WHERE id(o) = $occ_upd[i]
  WITH o, i WHERE type(o) = 'OCCURS' AND o.corpus = $corpus_id
  SET o.n = o.n + $occ_upd_n[i], o.sum_act = o.sum_act + $occ_upd_act[i], o.n_graphs = o.n_graphs + $occ_upd_g[i]
  RETURN count(*) AS occurs_updated
}
REMOVE f._lock
RETURN created, updated, occurs_created, occurs_updated
"""


def _apply_chunk(tx: ManagedTransaction, params: dict) -> bool:
    """True when this call applied the chunk; False when the guard refused it (already applied, lease or
    fold gone). A partial match (an id that no longer names what it named) rolls back."""
    rec = tx.run(_APPLY_CHUNK, **params).single()
    if rec is None:
        return False
    want = tuple(len(params[k]) for k in ("new_a", "upd_e", "occ_new", "occ_upd"))
    got = (rec["created"], rec["updated"], rec["occurs_created"], rec["occurs_updated"])
    if got != want:
        raise FoldConflict(f"chunk {params['chunk']} matched {got} of {want} rows (AGG created, AGG updated, "
                           "OCCURS created, OCCURS updated): an aggregate or feature changed under the fold")
    return True


_FOLD_STATE = """
MATCH (f:AggFold {corpus_id: $corpus_id})
RETURN f.writer AS writer, f.fold_id AS fold_id, f.applied AS applied, f.key_hash AS key_hash
"""


# -- 4. close ------------------------------------------------------------------------------------------

_CLOSE = """
MATCH (f:AggFold {corpus_id: $corpus_id})
SET f._lock = true
WITH f
WHERE f.writer = $token AND f.fold_id = $fold_id AND f.applied = $n_chunks
CALL (f) {
  UNWIND f.fold_graphs AS gid
  MATCH (g:Graph {graph_id: gid})
  SET g.agg_state = 'folded', g.folded_at = $now
  RETURN count(g) AS n
}
SET f.fold_id = null, f.fold_graphs = null, f.applied = null, f.n_chunks = null, f.key_hash = null,
    f.chunk_pairs = null, f.opened_at = null, f.folds_done = f.folds_done + 1,
    f.graphs_folded = f.graphs_folded + n, f.lease_until = $now + $lease_s
REMOVE f._lock
RETURN n
"""


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, max(n, 1), size)]


def _fold_once(session, corpus_id: str, token: str, lease_s: float, fold: _Fold,  # noqa: ANN001 - neo4j Session
               result: FoldResult) -> None:
    t = time.perf_counter()
    contrib = session.execute_read(read_contribution, fold.graphs)
    key_hash = contrib.key_hash()
    fid = session.execute_read(_feature_ids, contrib.fkeys)
    node_of = np.asarray([fid[k] for k in contrib.fkeys], dtype=np.int64)  # feature index -> Feature node id
    n_feat = max(1, len(contrib.fkeys))
    pair_keys = contrib.src * n_feat + contrib.dst  # sorted (np.unique order)
    # The AGG id of each pair the corpus already has (-1: new pair), and the OCCURS id of each feature.
    by_node = np.argsort(node_of)

    def fold_index(node_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature index of each node id, and whether the node is a feature of this fold at all."""
        pos = np.minimum(np.searchsorted(node_of[by_node], node_ids), max(0, len(node_of) - 1))
        found = node_of[by_node][pos] == node_ids if len(node_of) else np.zeros(len(node_ids), dtype=bool)
        return by_node[pos] if len(node_of) else pos, found

    agg_id = np.full(len(pair_keys), -1, dtype=np.int64)
    ea, eb, ee = session.execute_read(_existing_pairs, corpus_id)
    (ia, oka), (ib, okb) = fold_index(ea), fold_index(eb)
    ekeys, erels = ia[oka & okb] * n_feat + ib[oka & okb], ee[oka & okb]
    pos = np.minimum(np.searchsorted(pair_keys, ekeys), max(0, len(pair_keys) - 1))
    hit = pair_keys[pos] == ekeys if len(pair_keys) else np.zeros(len(ekeys), dtype=bool)
    agg_id[pos[hit]] = erels[hit]
    occ_id = np.full(len(contrib.fkeys), -1, dtype=np.int64)
    ox = session.execute_read(_existing_occurs, corpus_id)
    ix, okx = fold_index(np.asarray(list(ox), dtype=np.int64))
    occ_id[ix[okx]] = np.asarray(list(ox.values()), dtype=np.int64)[okx]
    result.phases["read"] = result.phases.get("read", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    pair_slices = _chunks(len(pair_keys), fold.chunk_pairs)
    n_chunks = len(pair_slices)
    n_occ_chunk = -(-len(contrib.fkeys) // n_chunks) or 1
    for k in range(fold.applied, n_chunks):
        sl, osl = pair_slices[k], slice(k * n_occ_chunk, (k + 1) * n_occ_chunk)
        new, old = agg_id[sl] < 0, agg_id[sl] >= 0
        src, dst = node_of[contrib.src[sl]], node_of[contrib.dst[sl]]
        w, aw, n = contrib.sum_w[sl], contrib.sum_abs_w[sl], contrib.n[sl]
        occ_new, occ_old = occ_id[osl] < 0, occ_id[osl] >= 0
        occ_nodes, occ_rels = node_of[osl], occ_id[osl]
        on, oa, og = contrib.occ_n[osl], contrib.occ_act[osl], contrib.occ_graphs[osl]
        params = {
            "corpus_id": corpus_id, "token": token, "fold_id": fold.fold_id, "chunk": k, "n_chunks": n_chunks,
            "key_hash": key_hash, "now": time.time(), "lease_s": lease_s,
            "new_a": src[new].tolist(), "new_b": dst[new].tolist(), "new_w": w[new].tolist(),
            "new_aw": aw[new].tolist(), "new_n": n[new].tolist(),
            "upd_e": agg_id[sl][old].tolist(), "upd_w": w[old].tolist(), "upd_aw": aw[old].tolist(),
            "upd_n": n[old].tolist(),
            "occ_new": occ_nodes[occ_new].tolist(), "occ_new_n": on[occ_new].tolist(),
            "occ_new_act": oa[occ_new].tolist(), "occ_new_g": og[occ_new].tolist(),
            "occ_upd": occ_rels[occ_old].tolist(), "occ_upd_n": on[occ_old].tolist(),
            "occ_upd_act": oa[occ_old].tolist(), "occ_upd_g": og[occ_old].tolist(),
        }
        if session.execute_write(_apply_chunk, params):
            result.pairs_created += len(params["new_a"])
            result.pairs_updated += len(params["upd_e"])
            continue
        state = session.execute_read(lambda tx: tx.run(_FOLD_STATE, corpus_id=corpus_id).single(strict=True))
        if state["writer"] != token or state["fold_id"] != fold.fold_id:
            raise FoldBusy(f"corpus {corpus_id}: folding lease lost to another worker")
        if state["key_hash"] is not None and state["key_hash"] != key_hash:
            raise FoldConflict(f"corpus {corpus_id}: the graphs of open fold {fold.fold_id} changed since it "
                               "began (deleted or rewritten); its aggregates are partly applied")
        if state["applied"] <= k:
            raise RuntimeError(f"corpus {corpus_id}: aggregate chunk {k} not applied (state {dict(state)})")
        # applied > k: another attempt of this fold applied the chunk already; skip it
    result.phases["apply"] = result.phases.get("apply", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    closed = session.execute_write(lambda tx: tx.run(
        _CLOSE, corpus_id=corpus_id, token=token, fold_id=fold.fold_id, n_chunks=n_chunks, now=time.time(),
        lease_s=lease_s).single())
    if closed is None:
        raise FoldBusy(f"corpus {corpus_id}: folding lease lost before fold {fold.fold_id} was closed")
    result.phases["close"] = result.phases.get("close", 0.0) + time.perf_counter() - t
    result.folds += 1
    result.graphs += contrib.n_graphs
    result.edges += contrib.n_edges


def fold_corpus(driver: Driver, corpus_id: str, *, database: str | None = None, token: str | None = None,
                lease_s: float = DEFAULT_FOLD_LEASE_S, max_edges: int = FOLD_MAX_EDGES,
                max_graphs: int = FOLD_MAX_GRAPHS, chunk_pairs: int | None = None, wait_s: float = 0.0,
                sleep: Callable[[float], None] = time.sleep) -> FoldResult:
    """Fold every pending graph of ``corpus_id`` into its aggregates (several folds if needed); returns
    what was folded. ``token`` identifies the folder (a retried task passes the same one and resumes its
    own fold at once). Another folder's live lease raises ``FoldBusy`` after waiting up to ``wait_s``."""
    t0 = time.perf_counter()
    token = token or uuid.uuid4().hex
    chunk = chunk_pairs or FOLD_CHUNK_PAIRS
    result = FoldResult(corpus_id)
    deadline = time.monotonic() + wait_s
    # Internal ids (id(), deprecated in Cypher 5 but supported by 5.26 LTS) for the seeks of a bulk fold:
    # cheaper than element-id strings to send and parse. Ids are looked up in the fold and used in its chunk
    # transactions; Feature nodes are never deleted, an AGG edge removed meanwhile fails the chunk's count
    # check (FoldConflict) instead of being updated wrongly.
    with driver.session(database=database, notifications_disabled_classifications=["DEPRECATION"]) as session:
        while True:
            t = time.perf_counter()
            try:
                fold = session.execute_write(_plan, corpus_id, token, lease_s, max_edges, max_graphs, chunk)
            except FoldBusy:
                if time.monotonic() >= deadline:
                    raise
                sleep(0.2)
                continue
            result.phases["plan"] = result.phases.get("plan", 0.0) + time.perf_counter() - t
            if fold is None:
                break
            _fold_once(session, corpus_id, token, lease_s, fold, result)
    result.seconds = time.perf_counter() - t0
    return result


def aggregate_state(driver: Driver, corpus_id: str, *, database: str | None = None) -> dict[str, int]:
    """Graphs of the corpus by aggregate state (pending, folding, folded) and the folds closed so far."""
    rec = driver.execute_query(
        "OPTIONAL MATCH (f:AggFold {corpus_id: $c}) "
        "CALL (f) { MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'complete' "
        "  RETURN sum(CASE g.agg_state WHEN 'pending' THEN 1 ELSE 0 END) AS pending, "
        "         sum(CASE g.agg_state WHEN 'folding' THEN 1 ELSE 0 END) AS folding, "
        "         sum(CASE g.agg_state WHEN 'folded' THEN 1 ELSE 0 END) AS folded } "
        "RETURN pending, folding, folded, coalesce(f.folds_done, 0) AS folds",
        c=corpus_id, database_=database).records[0]
    return dict(rec)
