"""Latency of feature search (GET /features?q=) and the corpus listings on generated graphs.

Writes ``--graphs`` synthetic graphs (``--features`` feature instances each over ``--positions`` token positions,
features drawn from 4 layers x (attn, mlp) x ``--dict-size``, tokens from a 50-word vocabulary) with the project's
writer into the Neo4j of ``ATLAS_NEO4J_URI`` (use a test instance: ``scripts/dev test`` ports, or start one with
``atlas services up`` and its own ATLAS_STATE_DIR), then times each query through the query layer (what the
route calls) ``--reps`` times and prints p50/p95 with the load average. The graphs are deleted at the end.

    ~/.cache/circuit-atlas/venv/bin/python bench/feature_search.py --graphs 300 --features 300
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid

from service.query import corpora, features
from workers.connections.neo4j import neo4j_driver
from workers.settings import get_settings
from workers.store.records import GraphRecord, NodeRow
from workers.store.writer import delete_graph, write_graph

WORDS = [f"w{i}" for i in range(48)] + ["the", "John"]


def make_graph(rng: random.Random, tag: str, i: int, n_pos: int, n_feat: int, dict_size: int) -> GraphRecord:
    nodes = [NodeRow(f"emb:p{p}", "embedding", 0, p, activation=1.0, token=rng.choice(WORDS)) for p in range(n_pos)]
    seen = set()
    while len(seen) < n_feat:
        layer, site, pos = rng.randrange(4), rng.choice(("attn", "mlp")), rng.randrange(n_pos)
        # Zipf-like feature popularity: a few features recur in most graphs, most are rare.
        f = min(dict_size - 1, int(rng.paretovariate(1.2)) - 1)
        seen.add((layer, site, pos, f))
    for layer, site, pos, f in sorted(seen):
        nodes.append(NodeRow(f"feat:L{layer}.{site}:p{pos}:f{f}", "feature", layer, pos, feature=f,
                             dictionary=f"L{layer}.{site}", activation=rng.uniform(0.1, 5.0),
                             influence=rng.random()))
    return GraphRecord(graph_id=f"bfs-{tag}-{i}", prompt_id=f"bfs-{tag}-p{i}", corpus_id=f"bfs-{tag}",
                       dictionary_set=f"bfs-{tag}", model="bench", nodes=nodes, edge_src=[], edge_dst=[], edge_w=[])


def timed(fn, reps: int) -> tuple[float, float, int]:  # noqa: ANN001
    out = None
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ms.append(1000 * (time.perf_counter() - t))
    ms.sort()
    n = len(out["items"]) if isinstance(out, dict) else len(out)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.95 * len(ms)))], n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=int, default=300)
    ap.add_argument("--features", type=int, default=300)
    ap.add_argument("--positions", type=int, default=16)
    ap.add_argument("--dict-size", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--top-tokens", type=int, default=3, help="top_tokens per hit (0: the ranking query alone)")
    ap.add_argument("--keep", action="store_true", help="leave the graphs in the database (to profile queries)")
    args = ap.parse_args()
    settings = get_settings()
    db = settings.neo4j_database
    tag = uuid.uuid4().hex[:8]
    rng = random.Random(0)
    with neo4j_driver(settings) as driver:
        t = time.perf_counter()
        recs = [make_graph(rng, tag, i, args.positions, args.features, args.dict_size) for i in range(args.graphs)]
        for rec in recs:
            write_graph(driver, rec, database=db)
        print(f"wrote {len(recs)} graphs x {args.features} features in {time.perf_counter() - t:.1f}s")
        corpus, dset = recs[0].corpus_id, recs[0].dictionary_set
        n_features = driver.execute_query("MATCH (f:Feature) RETURN count(f) AS n", database_=db).records[0]["n"]
        n_nodes = driver.execute_query("MATCH (n:Node) RETURN count(n) AS n", database_=db).records[0]["n"]
        print(f"database: {n_features} features, {n_nodes} nodes; load average {os.getloadavg()}")
        cases = [
            ("key prefix dset/L2.mlp", f"{dset}/L2.mlp", None),
            ("key L2.mlp, corpus", "L2.mlp", corpus),
            ("key mlp/L1/, all corpora", "mlp/L1/", None),
            ("key L1:3, corpus", "L1:3", corpus),
            ("exact fkey", f"{dset}/L0.attn#0", None),
            ("token 'the', corpus", "the", corpus),
            ("token 'the', all corpora", "the", None),
            ("no match", "zzz-nothing", corpus),
        ]
        print(f"{'query':34} {'p50 ms':>8} {'p95 ms':>8} {'hits':>5}")
        for name, q, c in cases:
            p50, p95, n = timed(lambda q=q, c=c: features.search_features(driver, q, c, limit=20,
                                                                               top_tokens=args.top_tokens, database=db),
                                args.reps)
            print(f"{name:34} {p50:8.1f} {p95:8.1f} {n:5d}")
        p50, p95, n = timed(lambda: corpora.list_corpora(driver, 0, 50, database=db), args.reps)
        print(f"{'GET /corpora (50)':34} {p50:8.1f} {p95:8.1f} {n:5d}")
        p50, p95, n = timed(lambda: corpora.list_jobs(driver, 0, 50, database=db), args.reps)
        print(f"{'GET /jobs (50)':34} {p50:8.1f} {p95:8.1f} {n:5d}")
        print(f"load average after: {os.getloadavg()}")
        if args.keep:
            print(f"kept corpus {corpus} (dictionary set {dset})")
            return
        for rec in recs:
            delete_graph(driver, rec.graph_id, database=db)
        driver.execute_query("MATCH (c:Corpus {corpus_id: $c}) DETACH DELETE c", c=corpus, database_=db)
        driver.execute_query("MATCH (f:Feature) WHERE f.fkey STARTS WITH $p DETACH DELETE f", p=f"{dset}/",
                             database_=db)


if __name__ == "__main__":
    main()
