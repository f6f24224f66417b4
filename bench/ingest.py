"""Neo4j ingest rate of the graph writer (workers/store/writer.py) in edges/s, for graphs of 10k..1M edges.

    python bench/ingest.py [--edges 10000 100000 1000000] [--repeat 1]

Synthetic graphs shaped like attribution graphs: ~1 node per 25 edges, 85% of nodes features drawn from a
pool of 4,096 dictionary features (so feature pairs repeat and the corpus aggregates see real merging),
edges between random node pairs. Reports the whole write_graph call (claim, clear, nodes, Feature MERGE,
edges, and the final aggregate transaction: ``edges_per_s``), the graph without the aggregate transaction
(``graph_edges_per_s``) and the edge phase alone, commits included (``edge_phase_edges_per_s``). Uses the configured Neo4j
(ATLAS_NEO4J_URI...); writes into a throw-away corpus id and deletes the graphs afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from service.db import neo4j_driver  # noqa: E402
from workers.settings import get_settings  # noqa: E402
from workers.store import writer  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    settings = get_settings()
    corpus_id = f"bench{uuid.uuid4().hex[:8]}"
    results = []
    with neo4j_driver(settings) as driver:
        for n in args.edges:
            for rep in range(args.repeat):
                rec = synthetic_graph(n, rep, corpus_id)
                t0 = time.perf_counter()
                res = writer.write_graph(driver, rec, database=settings.neo4j_database)
                graph_s = res.seconds - res.phases["aggregates"]
                row = {"edges": n, "nodes": len(rec.nodes), "agg_pairs": len(writer.corpus_contribution(rec)["agg_src"]),
                       "seconds": round(time.perf_counter() - t0, 2),
                       "edges_per_s": round(n / res.seconds),
                       "graph_edges_per_s": round(n / graph_s),
                       "edge_phase_edges_per_s": round(n / res.phases["edges"]),
                       "phases_s": {k: round(v, 2) for k, v in res.phases.items()}}
                results.append(row)
                print(json.dumps(row), flush=True)
        for row_rec in {r["edges"] for r in results}:
            for rep in range(args.repeat):
                writer.delete_graph(driver, f"bench-{corpus_id}-{row_rec}-{rep}", database=settings.neo4j_database)
        remove_bench_aggregates(driver, corpus_id, settings.neo4j_database)
    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "neo4j_heap": settings.neo4j_heap,
           "neo4j_pagecache": settings.neo4j_pagecache}
    print(json.dumps({"environment": env}))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "environment": env}, indent=2))


if __name__ == "__main__":
    main()
