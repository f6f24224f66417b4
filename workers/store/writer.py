"""Idempotent, batched writes of attribution graphs into Neo4j (schema: DESIGN.md §3, migrations/).

Protocol for one graph, safe under retries, duplicated tasks and crashes at any point:

1. ``claim``: MERGE the (:Graph) node and take a lease on it (a random writer token and an expiry).
   A graph already ``complete`` is skipped; a live lease held by another writer raises ``GraphBusy``
   (the caller retries later); an expired lease is taken over.
2. ``clear``: delete whatever an earlier, interrupted attempt left (nodes of this graph_id), in batches.
3. nodes, then edges, in UNWIND batches with CREATE (columnar parameters).
4. aggregates: the graph's contribution to the corpus aggregates (AGG, OCCURS) in chunk transactions,
   each applied exactly once (a counter on the Graph node, advanced in the chunk's own transaction,
   survives crashes and takeovers; see ``_AGG_CHUNK``).
5. ``finish``: flips the status to ``complete`` if this writer still holds the lease and every chunk is
   applied. Aggregates are therefore counted exactly once per graph.

Readers only see graphs whose status is ``complete``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from neo4j import Driver, ManagedTransaction

from workers.store.records import KIND_LABELS, GraphRecord, node_uid

NODE_BATCH = 20_000
EDGE_BATCH = 20_000
DELETE_BATCH = 20_000
AGG_BATCH = 20_000  # aggregate pairs per chunk transaction
# A writer renews its lease at every batch, so the lease only has to outlive one batch; a crashed
# writer's graph is taken over this long after its last batch.
DEFAULT_LEASE_S = 60.0


class GraphBusy(RuntimeError):
    """Another writer holds a live lease on this graph; retry after the lease expires."""


@dataclass(frozen=True)
class WriteResult:
    graph_id: str
    written: bool  # False: the graph was already complete, nothing was written
    n_nodes: int
    n_edges: int
    seconds: float
    # Seconds per phase (each including its commits): clear, nodes, features, edges, aggregates.
    phases: dict[str, float] = field(default_factory=dict)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# -- the steps, each a transaction function ------------------------------------------------------------

_CLAIM = """
MERGE (g:Graph {graph_id: $graph_id})
ON CREATE SET g.status = 'writing', g.created_at = datetime()
SET g._lock = true
WITH g, g.status <> 'complete' AND (g.writer IS NULL OR g.writer = $token OR g.lease_until < $now) AS claimed
SET g.writer = CASE WHEN claimed THEN $token ELSE g.writer END,
    g.lease_until = CASE WHEN claimed THEN $now + $lease_s ELSE g.lease_until END,
    g.status = CASE WHEN claimed THEN 'writing' ELSE g.status END
REMOVE g._lock
RETURN g.status AS status, claimed
"""


def _claim(tx: ManagedTransaction, graph_id: str, token: str, lease_s: float) -> tuple[str, bool]:
    rec = tx.run(_CLAIM, graph_id=graph_id, token=token, now=time.time(), lease_s=lease_s).single(strict=True)
    return rec["status"], rec["claimed"]


def _renew(tx: ManagedTransaction, graph_id: str, token: str, lease_s: float) -> bool:
    rec = tx.run(
        "MATCH (g:Graph {graph_id: $graph_id}) WHERE g.writer = $token AND g.status = 'writing' "
        "SET g.lease_until = $now + $lease_s RETURN count(g) AS c",
        graph_id=graph_id, token=token, now=time.time(), lease_s=lease_s,
    ).single(strict=True)
    return rec["c"] == 1


def _clear_batch(tx: ManagedTransaction, graph_id: str) -> int:
    """Delete up to DELETE_BATCH of what this graph_id has stored: its ATTR edges first, then its nodes.

    Edges go first and separately because a node's DETACH DELETE takes all its edges into the same
    transaction: 20k nodes of a 1M-edge graph carry ~1M edges, beyond Neo4j's transaction memory."""
    rec = tx.run(
        "MATCH (:Node {graph_id: $graph_id})-[r:ATTR]->() WITH r LIMIT $limit DELETE r RETURN count(*) AS c",
        graph_id=graph_id, limit=DELETE_BATCH,
    ).single(strict=True)
    if rec["c"]:
        return rec["c"]
    rec = tx.run(
        "MATCH (n:Node {graph_id: $graph_id}) WITH n LIMIT $limit DETACH DELETE n RETURN count(*) AS c",
        graph_id=graph_id,
        limit=DELETE_BATCH,
    ).single(strict=True)
    return rec["c"]


def _create_nodes(tx: ManagedTransaction, label: str, props: dict[str, list]) -> list[str]:
    """Create one batch of nodes; returns their element ids in input order (edges are created by
    element-id seeks, about twice as fast as uid index lookups)."""
    # Labels cannot be parameters; `label` comes from KIND_LABELS only.
    result = tx.run(
        f"""
        UNWIND range(0, size($uid) - 1) AS i
        CREATE (n:Node:{label} {{
          uid: $uid[i], graph_id: $graph_id, node_id: $node_id[i], kind: $kind[i], layer: $layer[i],
          pos: $pos[i], feature: $feature[i], dictionary: $dictionary[i], fkey: $fkey[i],
          activation: $activation[i], influence: $influence[i], token: $token[i]
        }})
        RETURN i, elementId(n) AS eid
        """,
        **props,
    )
    eids = [""] * len(props["uid"])
    for rec in result:
        eids[rec["i"]] = rec["eid"]
    return eids


def _create_edges(tx: ManagedTransaction, src: list[str], dst: list[str], w: list[float]) -> None:
    tx.run(
        """
        UNWIND range(0, size($src) - 1) AS i
        MATCH (a) WHERE elementId(a) = $src[i]
        MATCH (b) WHERE elementId(b) = $dst[i]
        CREATE (a)-[:ATTR {w: $w[i]}]->(b)
        """,
        src=src,
        dst=dst,
        w=w,
    )


def _merge_features(tx: ManagedTransaction, fkeys: list[str], dictionaries: list[str], indices: list[int]) -> None:
    tx.run(
        """
        UNWIND range(0, size($fkey) - 1) AS i
        MERGE (f:Feature {fkey: $fkey[i]})
        ON CREATE SET f.dictionary = $dictionary[i], f.index = $index[i], f.dictionary_set = $dictionary_set
        """,
        fkey=fkeys,
        dictionary=dictionaries,
        index=indices,
        dictionary_set=fkeys[0].split("/", 1)[0] if fkeys else "",
    )


# Aggregates are applied in chunks (a 1M-edge graph has ~800k feature pairs: one transaction that size
# exceeds Neo4j's transaction memory), each chunk exactly once: a chunk transaction applies chunk k only
# if the Graph's counter agg_applied equals k, and advances it in the same transaction. The counter
# survives a crash and a takeover (claim and clear never reset it), so a new writer resumes at the next
# chunk; the contribution's hash is recorded with the first chunk and a writer whose graph differs is
# refused (the engine is deterministic; a different graph would double count).
_AGG_CHUNK = """
MATCH (g:Graph {graph_id: $graph_id})
SET g._lock = true
WITH g
WHERE g.status = 'writing' AND g.writer = $token AND coalesce(g.agg_applied, 0) = $chunk
  AND coalesce(g.agg_hash, $agg_hash) = $agg_hash
SET g.agg_applied = $chunk + 1, g.agg_hash = $agg_hash, g.agg_chunks = $n_chunks
WITH g
CALL (g) {
  UNWIND range(0, size($occ_fkey) - 1) AS i
  MATCH (f:Feature {fkey: $occ_fkey[i]})
  MERGE (c:Corpus {corpus_id: $corpus_id})
  MERGE (f)-[o:OCCURS {corpus: $corpus_id}]->(c)
  ON CREATE SET o.n = 0, o.sum_act = 0.0, o.n_graphs = 0
  SET o.n = o.n + $occ_n[i], o.sum_act = o.sum_act + $occ_act[i], o.n_graphs = o.n_graphs + 1
}
CALL (g) {
  UNWIND range(0, size($agg_src) - 1) AS i
  MATCH (a:Feature {fkey: $agg_src[i]})
  MATCH (b:Feature {fkey: $agg_dst[i]})
  MERGE (a)-[e:AGG {corpus: $corpus_id}]->(b)
  ON CREATE SET e.sum_w = 0.0, e.sum_abs_w = 0.0, e.n = 0
  SET e.sum_w = e.sum_w + $agg_w[i], e.sum_abs_w = e.sum_abs_w + $agg_abs_w[i], e.n = e.n + $agg_n[i]
}
REMOVE g._lock
RETURN count(g) AS applied
"""

_GRAPH_STATE = """
MATCH (g:Graph {graph_id: $graph_id})
RETURN g.status AS status, g.writer AS writer, coalesce(g.agg_applied, 0) AS applied, g.agg_hash AS hash
"""

_FINISH = """
MATCH (g:Graph {graph_id: $graph_id})
WHERE g.status = 'writing' AND g.writer = $token AND coalesce(g.agg_applied, 0) = $n_chunks
SET g.status = 'complete', g.completed_at = datetime(), g.n_nodes = $n_nodes, g.n_edges = $n_edges,
    g.writer = null, g.lease_until = null
RETURN count(g) AS finished
"""


def _aggregates_started(session, graph_id: str) -> bool:  # noqa: ANN001 - neo4j Session
    state = session.execute_read(lambda tx: tx.run(_GRAPH_STATE, graph_id=graph_id).single())
    return state is not None and state["applied"] > 0


def _apply_chunk(tx: ManagedTransaction, params: dict) -> bool:
    return tx.run(_AGG_CHUNK, **params).single(strict=True)["applied"] == 1


def _finish(tx: ManagedTransaction, params: dict) -> bool:
    return tx.run(_FINISH, **params).single(strict=True)["finished"] == 1


def contribution_chunks(contrib: dict[str, list], size: int) -> list[dict[str, list]]:
    """Split the contribution into chunks of at most ``size`` aggregate pairs (+ occurrence rows)."""
    n_agg, n_occ = len(contrib["agg_src"]), len(contrib["occ_fkey"])
    n_chunks = max(1, -(-max(n_agg, n_occ) // size))
    agg_keys = ("agg_src", "agg_dst", "agg_w", "agg_abs_w", "agg_n")
    occ_keys = ("occ_fkey", "occ_n", "occ_act")
    return [{**{k: contrib[k][i * size:(i + 1) * size] for k in agg_keys},
             **{k: contrib[k][i * size:(i + 1) * size] for k in occ_keys}} for i in range(n_chunks)]


# -- the public entry point ----------------------------------------------------------------------------


def _graph_props(rec: GraphRecord) -> dict:
    return {
        "graph_id": rec.graph_id,
        "prompt_id": rec.prompt_id,
        "corpus_id": rec.corpus_id,
        "model": rec.model,
        "dictionary_set": rec.dictionary_set,
        "target": json.dumps(rec.target, sort_keys=True),
        "settings": json.dumps(rec.settings, sort_keys=True),
        "metrics": json.dumps(rec.metrics, sort_keys=True),
        "provenance": json.dumps(rec.provenance, sort_keys=True),
    }


def corpus_contribution(rec: GraphRecord) -> dict[str, list]:
    """This graph's contribution to the corpus aggregates, summed per (source fkey, target fkey).

    A feature appears once per position in a graph; the aggregate counts every instance pair.
    """
    fkey_of = {n.node_id: n.fkey(rec.dictionary_set) for n in rec.nodes}
    agg: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True):
        fs, fd = fkey_of.get(s), fkey_of.get(d)
        if fs is None or fd is None:
            continue
        row = agg[(fs, fd)]
        row[0] += w
        row[1] += abs(w)
        row[2] += 1
    occ: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for n in rec.nodes:
        fk = n.fkey(rec.dictionary_set)
        if fk is not None:
            occ[fk][0] += 1
            occ[fk][1] += float(n.activation or 0.0)
    keys = sorted(agg)
    okeys = sorted(occ)
    return {
        "agg_src": [k[0] for k in keys],
        "agg_dst": [k[1] for k in keys],
        "agg_w": [agg[k][0] for k in keys],
        "agg_abs_w": [agg[k][1] for k in keys],
        "agg_n": [agg[k][2] for k in keys],
        "occ_fkey": okeys,
        "occ_n": [occ[k][0] for k in okeys],
        "occ_act": [occ[k][1] for k in okeys],
    }


def _node_columns(rec: GraphRecord, nodes: Sequence) -> dict[str, list]:
    return {
        "graph_id": rec.graph_id,
        "uid": [node_uid(rec.graph_id, n.node_id) for n in nodes],
        "node_id": [n.node_id for n in nodes],
        "kind": [n.kind for n in nodes],
        "layer": [n.layer for n in nodes],
        "pos": [n.pos for n in nodes],
        "feature": [n.feature for n in nodes],
        "dictionary": [n.dictionary for n in nodes],
        "fkey": [n.fkey(rec.dictionary_set) for n in nodes],
        "activation": [None if n.activation is None else float(n.activation) for n in nodes],
        "influence": [None if n.influence is None else float(n.influence) for n in nodes],
        "token": [n.token for n in nodes],
    }


def write_graph(
    driver: Driver,
    rec: GraphRecord,
    *,
    database: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    should_stop=None,
    token: str | None = None,
) -> WriteResult:
    """Write one graph exactly once. ``should_stop()`` is checked between batches (job cancellation);
    when it returns True the partial write is removed and ``InterruptedError`` is raised.

    ``token`` identifies the writer (default: random). A retry or redelivery of the same logical writer
    (the same Celery task id) passes the same token and takes over its own lease at once instead of
    waiting for it to expire."""
    t0 = time.perf_counter()
    token = token or uuid.uuid4().hex
    node_ids = {n.node_id for n in rec.nodes}
    if len(node_ids) != len(rec.nodes):
        raise ValueError(f"graph {rec.graph_id}: node ids are not unique")
    missing = (set(rec.edge_src) | set(rec.edge_dst)) - node_ids
    if missing:
        raise ValueError(f"graph {rec.graph_id}: {len(missing)} edge endpoints are not nodes, e.g. {sorted(missing)[:3]}")

    with driver.session(database=database) as session:
        status, claimed = session.execute_write(_claim, rec.graph_id, token, lease_s)
        if status == "complete":
            return WriteResult(rec.graph_id, False, 0, 0, time.perf_counter() - t0)
        if not claimed:
            raise GraphBusy(f"graph {rec.graph_id} is being written by another worker")

        def check_stop() -> None:
            if should_stop is not None and should_stop() and not _aggregates_started(session, rec.graph_id):
                # (Once an earlier attempt applied aggregate chunks the graph must be finished, not dropped.)
                while session.execute_write(_clear_batch, rec.graph_id):
                    pass
                # The Graph node goes too: a cancelled graph leaves nothing behind (it was never complete).
                session.execute_write(lambda tx: tx.run(
                    "MATCH (g:Graph {graph_id: $g}) WHERE g.writer = $token DETACH DELETE g",
                    g=rec.graph_id, token=token).consume())
                raise InterruptedError(f"graph {rec.graph_id}: write cancelled")
            if not session.execute_write(_renew, rec.graph_id, token, lease_s):
                raise GraphBusy(f"graph {rec.graph_id}: lease lost to another writer")

        phases: dict[str, float] = defaultdict(float)
        t = time.perf_counter()
        while session.execute_write(_clear_batch, rec.graph_id):
            pass
        session.execute_write(
            lambda tx: tx.run(
                "MATCH (g:Graph {graph_id: $graph_id}) SET g += $props", graph_id=rec.graph_id, props=_graph_props(rec)
            ).consume()
        )

        phases["clear"] += time.perf_counter() - t
        t = time.perf_counter()
        by_label: dict[str, list] = defaultdict(list)
        for n in rec.nodes:
            by_label[KIND_LABELS[n.kind]].append(n)
        element_id: dict[str, str] = {}
        for label, nodes in sorted(by_label.items()):
            for sl in _chunks(len(nodes), NODE_BATCH):
                check_stop()
                eids = session.execute_write(_create_nodes, label, _node_columns(rec, nodes[sl]))
                element_id.update(zip((n.node_id for n in nodes[sl]), eids, strict=True))

        phases["nodes"] += time.perf_counter() - t
        t = time.perf_counter()
        feats = sorted({(n.fkey(rec.dictionary_set), n.dictionary, n.feature) for n in rec.nodes if n.kind == "feature"})
        for sl in _chunks(len(feats), NODE_BATCH):
            part = feats[sl]
            session.execute_write(_merge_features, [f[0] for f in part], [f[1] for f in part], [f[2] for f in part])

        phases["features"] += time.perf_counter() - t
        t = time.perf_counter()
        src = [element_id[s] for s in rec.edge_src]
        dst = [element_id[d] for d in rec.edge_dst]
        w = [float(x) for x in rec.edge_w]
        for sl in _chunks(len(w), EDGE_BATCH):
            check_stop()
            session.execute_write(_create_edges, src[sl], dst[sl], w[sl])

        check_stop()
        phases["edges"] += time.perf_counter() - t
        t = time.perf_counter()
        # From here on the graph is finished, not cancelled: aggregates must not stay half-applied.
        contrib = corpus_contribution(rec)
        agg_hash = hashlib.sha256(json.dumps(contrib, sort_keys=True).encode()).hexdigest()
        chunks = contribution_chunks(contrib, AGG_BATCH)
        base = {"graph_id": rec.graph_id, "token": token, "corpus_id": rec.corpus_id, "agg_hash": agg_hash,
                "n_chunks": len(chunks)}
        for k, chunk in enumerate(chunks):
            if session.execute_write(_renew, rec.graph_id, token, lease_s) is False:
                raise GraphBusy(f"graph {rec.graph_id}: lease lost to another writer")
            if session.execute_write(_apply_chunk, {**base, **chunk, "chunk": k}):
                continue
            state = session.execute_read(lambda tx: tx.run(_GRAPH_STATE, graph_id=rec.graph_id).single(strict=True))
            if state["hash"] is not None and state["hash"] != agg_hash:
                raise RuntimeError(
                    f"graph {rec.graph_id}: an earlier attempt applied part of its aggregates from a different graph "
                    "(the engine gave a different result on retry); delete the corpus aggregates and recompute")
            if state["writer"] != token:
                raise GraphBusy(f"graph {rec.graph_id}: lease lost before its aggregates were applied")
            if state["applied"] <= k:
                raise RuntimeError(f"graph {rec.graph_id}: aggregate chunk {k} not applied (state {dict(state)})")
            # applied > k: an earlier, interrupted attempt applied this chunk already; skip it
        if not session.execute_write(_finish, {**base, "n_nodes": len(rec.nodes), "n_edges": len(w)}):
            # Lost the lease (we were too slow and another writer took over): that writer completes it.
            raise GraphBusy(f"graph {rec.graph_id}: lease lost before completion")
        phases["aggregates"] += time.perf_counter() - t
    return WriteResult(rec.graph_id, True, len(rec.nodes), len(w), time.perf_counter() - t0, dict(phases))


def delete_graph(driver: Driver, graph_id: str, *, database: str | None = None) -> None:
    """Remove a graph's nodes and its Graph node. Aggregates it contributed are not subtracted."""
    with driver.session(database=database) as session:
        while session.execute_write(_clear_batch, graph_id):
            pass
        session.execute_write(lambda tx: tx.run("MATCH (g:Graph {graph_id: $g}) DETACH DELETE g", g=graph_id).consume())
