"""Neo4j ingest rate of the whole store path in edges/s, for graphs of 10k..1M edges: the graph write
(workers/store/writer.py: claim, clear, nodes, Feature MERGE, edges, finish) and the corpus-aggregate fold
that follows it (workers/store/aggregates.py: read back, sum per feature pair, AGG/OCCURS chunks).

    python bench/ingest.py [--edges 10000 100000 1000000] [--repeat 1] [--graphs-per-corpus 1]

Synthetic graphs shaped like attribution graphs: ~1 node per 25 edges, 85% of nodes features drawn from a
pool of 4,096 dictionary features (so feature pairs repeat and the aggregates see real merging), edges
between random node pairs. Each size gets a fresh corpus: its ``--graphs-per-corpus`` graphs are written
(``fold=False``, as the pipeline does), then folded by one ``fold_corpus`` call, as the pipeline's cpu queue
does. Per size it prints edges/s of the graph writes (``write_edges_per_s``), of the fold
(``fold_edges_per_s``) and of both one after the other (``total_edges_per_s``: write + fold seconds, the
rate with aggregates included), plus the phases, the CPU seconds of the Neo4j server and of this client,
and the load average. Uses the configured Neo4j (ATLAS_NEO4J_URI...) and deletes what it wrote.

``--overlap`` runs the graph writes and the folds at the same time instead, as the pipeline does (writes
in the gpu-queue workers, folds in a cpu-queue worker): one thread writes the corpus's graphs one after the
other while another folds whatever is pending until every graph is folded; ``total_edges_per_s`` is then
the corpus's edges over the wall time from the first write to the last fold.

``--writers N`` writes the corpus's graphs from N threads at once (each graph by one thread, as N pipeline
workers do; a graph's own nodes and edges are never shared, only Feature nodes are merged), so the server
can use more than one core for the writes; use it with ``--graphs-per-corpus`` >= N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workers.connections.neo4j import neo4j_driver  # noqa: E402
from workers.settings import get_settings  # noqa: E402
from workers.store import aggregates, writer  # noqa: E402
from workers.store.records import GraphRecord, NodeRow  # noqa: E402


def synthetic_graph(n_edges: int, seed: int, corpus_id: str) -> GraphRecord:
    rng = random.Random(seed)
    n_nodes = max(50, n_edges // 25)
    n_pos = 64
    nodes: list[NodeRow] = []
    seen: set[str] = set()
    while len(nodes) < n_nodes:
        r = rng.random()
        p = rng.randrange(n_pos)
        if r < 0.85:
            layer, f = rng.randrange(8), rng.randrange(512)
            nid = f"feat:L{layer}.mlp:p{p}:f{f}"
            row = NodeRow(nid, "feature", layer, p, feature=f, dictionary=f"L{layer}.mlp", activation=rng.random(),
                          influence=rng.random())
        elif r < 0.95:
            layer = rng.randrange(8)
            nid = f"err:L{layer}.mlp:p{p}"
            row = NodeRow(nid, "error", layer, p, activation=1.0)
        else:
            nid = f"emb:p{p}"
            row = NodeRow(nid, "embedding", -1, p, activation=1.0, token=f"t{p}")
        if nid not in seen:
            seen.add(nid)
            nodes.append(row)
    ids = [n.node_id for n in nodes]
    src = [ids[rng.randrange(n_nodes)] for _ in range(n_edges)]
    dst = [ids[rng.randrange(n_nodes)] for _ in range(n_edges)]
    w = [rng.uniform(-1, 1) for _ in range(n_edges)]
    return GraphRecord(f"bench-{corpus_id}-{n_edges}-{seed}", f"p{seed}", corpus_id, "bench", "bench", nodes, src, dst, w)


def remove_bench_aggregates(driver, corpus_id: str, database: str | None) -> None:  # noqa: ANN001
    """Delete the bench corpus's AGG / OCCURS edges in batches (a million in one transaction would exceed
    Neo4j's transaction memory); ``IN TRANSACTIONS`` needs an auto-commit ``session.run``."""
    with driver.session(database=database) as session:
        for rel in ("AGG", "OCCURS"):
            session.run(f"MATCH ()-[e:{rel} {{corpus: $c}}]->() CALL (e) {{ DELETE e }} IN TRANSACTIONS OF 20000 ROWS",
                        c=corpus_id).consume()
        session.run("MATCH (f:AggFold {corpus_id: $c}) DETACH DELETE f", c=corpus_id).consume()
        session.run("MATCH (c:Corpus {corpus_id: $c}) DETACH DELETE c", c=corpus_id).consume()


def neo4j_cpu_seconds(settings) -> float | None:  # noqa: ANN001
    """User + system CPU seconds of the local Neo4j server (None when it is not ours / not on this host)."""
    try:
        pid = int((settings.state_dir / "neo4j" / "run" / "atlas-neo4j.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """Wall seconds and CPU seconds of the server and of this process between start() and stop()."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        self.settings = settings

    def __enter__(self) -> CpuClock:
        self.t, self.srv, self.me = time.perf_counter(), neo4j_cpu_seconds(self.settings), sum(os.times()[:2])
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t
        srv = neo4j_cpu_seconds(self.settings)
        self.server_cpu = None if srv is None or self.srv is None else srv - self.srv
        self.client_cpu = sum(os.times()[:2]) - self.me


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--graphs-per-corpus", type=int, default=1)
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="first write and fold a 10k-edge graph, unreported (query plans, JIT)")
    ap.add_argument("--overlap", action="store_true", help="fold while writing (see the module docstring)")
    ap.add_argument("--writers", type=int, default=1, help="threads writing graphs at once (see the docstring)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.writers < 1:
        ap.error("--writers must be at least 1")
    settings = get_settings()
    db = settings.neo4j_database
    results = []
    with neo4j_driver(settings) as driver:
        sizes = ([("warmup", 10_000)] if args.warmup else []) + [("run", n) for n in args.edges for _ in range(args.repeat)]
        for i, (kind, n) in enumerate(sizes):
            corpus_id = f"bench{uuid.uuid4().hex[:8]}"
            recs = [synthetic_graph(n, 100 * i + k, corpus_id) for k in range(args.graphs_per_corpus)]
            load0 = os.getloadavg()[0]
            try:
                row = (overlapped if args.overlap else sequential)(driver, settings, recs, corpus_id, args.writers)
                row["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                if kind == "run":
                    results.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                for rec in recs:
                    writer.delete_graph(driver, rec.graph_id, database=db)
                remove_bench_aggregates(driver, corpus_id, db)
    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "neo4j_heap": settings.neo4j_heap,
           "neo4j_pagecache": settings.neo4j_pagecache, "node_batch": writer.NODE_BATCH,
           "edge_batch": writer.EDGE_BATCH, "fold_chunk_pairs": aggregates.FOLD_CHUNK_PAIRS}
    print(json.dumps({"environment": env}))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "environment": env}, indent=2))


def write_all(driver, recs: list[GraphRecord], db: str | None, writers: int) -> list[writer.WriteResult]:  # noqa: ANN001
    """Write the graphs (fold=False), ``writers`` at a time."""
    with ThreadPoolExecutor(max_workers=writers) as pool:
        return list(pool.map(lambda rec: writer.write_graph(driver, rec, database=db, fold=False), recs))


def sequential(driver, settings, recs: list[GraphRecord], corpus_id: str, writers: int) -> dict:  # noqa: ANN001
    """Write every graph (fold=False), then fold the corpus once."""
    db = settings.neo4j_database
    with CpuClock(settings) as wclock:
        writes = write_all(driver, recs, db, writers)
    with CpuClock(settings) as fclock:
        fold = aggregates.fold_corpus(driver, corpus_id, database=db)
    edges = sum(len(rec.edge_w) for rec in recs)
    assert fold.graphs == len(recs) and fold.edges == edges, fold
    return {"edges_per_graph": len(recs[0].edge_w), "graphs": len(recs), "writers": writers,
            "nodes_per_graph": len(recs[0].nodes), "agg_pairs": fold.pairs_created + fold.pairs_updated,
            "write_s": round(wclock.wall, 2), "fold_s": round(fclock.wall, 2),
            "write_edges_per_s": round(edges / wclock.wall), "fold_edges_per_s": round(edges / fclock.wall),
            "total_edges_per_s": round(edges / (wclock.wall + fclock.wall)),
            "write_phases_s": {k: round(sum(w.phases.get(k, 0.0) for w in writes), 2) for k in writes[0].phases},
            "fold_phases_s": {k: round(v, 2) for k, v in fold.phases.items()},
            "cpu_s": {"neo4j_write": _r(wclock.server_cpu), "client_write": _r(wclock.client_cpu),
                      "neo4j_fold": _r(fclock.server_cpu), "client_fold": _r(fclock.client_cpu)}}


def overlapped(driver, settings, recs: list[GraphRecord], corpus_id: str, writers: int) -> dict:  # noqa: ANN001
    """Write the graphs (``writers`` threads) while another thread folds what is pending, until all are folded."""
    db = settings.neo4j_database
    writing_done = threading.Event()
    folds: list[aggregates.FoldResult] = []
    errors: list[BaseException] = []

    def fold_loop() -> None:
        try:
            while True:
                last = writing_done.is_set()  # read before folding: a graph finished after this is seen next round
                folds.append(aggregates.fold_corpus(driver, corpus_id, database=db))
                if last:
                    return
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    with CpuClock(settings) as clock:
        folder = threading.Thread(target=fold_loop)
        folder.start()
        t = time.perf_counter()
        try:
            write_all(driver, recs, db, writers)
        finally:
            write_s = time.perf_counter() - t
            writing_done.set()
            folder.join()
    if errors:
        raise errors[0]
    edges = sum(len(rec.edge_w) for rec in recs)
    assert sum(f.graphs for f in folds) == len(recs), folds
    return {"edges_per_graph": len(recs[0].edge_w), "graphs": len(recs), "writers": writers,
            "nodes_per_graph": len(recs[0].nodes), "overlap": True, "agg_pairs": sum(f.pairs_created + f.pairs_updated for f in folds),
            "folds": sum(f.folds for f in folds), "write_s": round(write_s, 2), "total_s": round(clock.wall, 2),
            "write_edges_per_s": round(edges / write_s), "total_edges_per_s": round(edges / clock.wall),
            "cpu_s": {"neo4j": _r(clock.server_cpu), "client": _r(clock.client_cpu)}}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


if __name__ == "__main__":
    main()
