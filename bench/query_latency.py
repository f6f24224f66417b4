"""p50/p95 latency of the query API's hot reads on a database loaded with the project's writer.

    # a separate Neo4j for the benchmark (own state and ports), then load + measure:
    export ATLAS_STATE_DIR=$PWD/.state/bench-query ATLAS_NEO4J_URI=bolt://127.0.0.1:57687 \
           ATLAS_REDIS_URL=redis://127.0.0.1:56379/0 ATLAS_NEO4J_HEAP=3g ATLAS_NEO4J_PAGECACHE=3g
    atlas services up && atlas migrate
    python bench/query_latency.py --scale 1.0        # 1,000 graphs x 5,000 edges = 5M ATTR edges
    python bench/query_latency.py --scale 1.0 --skip-load   # measure again without loading

Load: ``graphs = 1000 * scale`` synthetic attribution graphs of ~5,000 edges and ~400 nodes each (24 token
positions, 4 layers, features drawn Zipf-like from 4 x 2,048 dictionary features so that features recur
across prompts, edges from earlier to later layers), in 10 corpora, written one by one with
``workers.store.writer.write_graph`` (idempotent: a rerun only writes graphs not yet complete), then each
corpus's aggregates folded with ``workers.store.aggregates.fold_corpus``.

Measured (each after 10 warm-up calls, ``--samples`` random calls):
- local circuit: ``service.query.circuits.circuit`` of a random graph with ``target`` = a random feature node
  (upstream cone), default read-time pruning (500 nodes, 5,000 edges: no rank cut-off on these graphs), and
  with ``max_nodes=100, max_edges=1000`` (both rank cut-offs computed on the server);
- feature page: ``service.query.features.feature_page`` of a random recurring feature in its corpus, and
  of the 20 most frequent (feature, corpus) pairs (the hottest features: ~1,300 instances per corpus);
- aggregate: ``service.query.global_circuits.aggregate_neighbours`` (upstream, top 20 by norm_w) of a random
  feature in its corpus.
Goals (issue #6): local circuit p95 < 50 ms, feature page p95 < 100 ms, aggregate < 1 s.

Numbers, the command and the load average of each run: bench/README.md, "Query latency".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from service.query import circuits, features, global_circuits  # noqa: E402
from workers.connections.neo4j import neo4j_driver  # noqa: E402
from workers.settings import get_settings  # noqa: E402
from workers.store.aggregates import fold_corpus  # noqa: E402
from workers.store.records import GraphRecord, NodeRow  # noqa: E402
from workers.store.writer import write_graph  # noqa: E402

N_LAYERS, N_POS, D_DICT = 4, 24, 2048
EDGES_PER_GRAPH, FEATURES_PER_GRAPH = 5_000, 360
N_CORPORA = 10
DSET = "bench-q"


def synthetic_graph(i: int) -> GraphRecord:
    rng = random.Random(i)
    nodes: list[NodeRow] = [NodeRow(f"emb:p{p}", "embedding", 0, p, activation=1.0, influence=rng.random(),
                                    token=f"tok{rng.randrange(500)}") for p in range(N_POS)]
    seen: set[str] = set()
    while len(nodes) < N_POS + FEATURES_PER_GRAPH:
        layer, p = rng.randrange(N_LAYERS), rng.randrange(N_POS)
        f = min(D_DICT - 1, int(rng.paretovariate(0.6)) - 1)  # heavy-tailed: a few features fire everywhere
        nid = f"feat:L{layer}.mlp:p{p}:f{f}"
        if nid in seen:
            continue
        seen.add(nid)
        nodes.append(NodeRow(nid, "feature", layer, p, feature=f, dictionary=f"L{layer}.mlp",
                             activation=rng.expovariate(1.0), influence=rng.expovariate(20.0)))
    for layer in range(N_LAYERS):
        for p in range(0, N_POS, 2):
            nodes.append(NodeRow(f"err:L{layer}.mlp:p{p}", "error", layer, p, activation=0.1, influence=rng.random() / 50))
    for t in range(3):
        nodes.append(NodeRow(f"logit:p{N_POS - 1}:t{t}", "logit", N_LAYERS, N_POS - 1, activation=1.0))
    # Edges go from earlier layers (embeddings at layer -1) to later ones, at positions <= the target's.
    order = {n.node_id: (-1 if n.kind == "embedding" else n.layer) for n in nodes}
    targets = [n for n in nodes if n.kind in ("feature", "logit")]
    edges: dict[tuple[str, str], float] = {}
    while len(edges) < EDGES_PER_GRAPH:
        t = rng.choice(targets)
        s = rng.choice(nodes)
        if s.kind == "logit" or order[s.node_id] >= order[t.node_id] or (s.pos or 0) > (t.pos or 0):
            continue
        edges[(s.node_id, t.node_id)] = rng.gauss(0.0, 0.1)
    keys = list(edges)
    return GraphRecord(f"bq-{i:05d}", f"bq-p{i:05d}", f"bq-c{i % N_CORPORA}", DSET, "bench-model", nodes,
                       [k[0] for k in keys], [k[1] for k in keys], [edges[k] for k in keys],
                       provenance={"n_layers": N_LAYERS, "token_strings": [n.token for n in nodes[:N_POS]]})


def load(driver, n_graphs: int, database: str) -> dict:  # noqa: ANN001
    have = {r["g"] for r in driver.execute_query(
        "MATCH (g:Graph) WHERE g.graph_id STARTS WITH 'bq-' AND g.status = 'complete' RETURN g.graph_id AS g",
        database_=database).records}
    t0, written, edges = time.perf_counter(), 0, 0
    for i in range(n_graphs):
        if f"bq-{i:05d}" in have:
            continue
        # The corpus aggregates are folded per corpus below, many graphs at once (workers/store/aggregates.py).
        res = write_graph(driver, synthetic_graph(i), database=database, fold=False)
        written += 1
        edges += res.n_edges
        if written % 25 == 0:
            el = time.perf_counter() - t0
            print(f"  wrote {written} graphs ({len(have) + written}/{n_graphs}), {edges / el:,.0f} edges/s", flush=True)
    t_write = time.perf_counter() - t0
    for c in range(N_CORPORA):  # also folds graphs a crashed earlier load wrote but did not fold
        folded = fold_corpus(driver, f"bq-c{c}", database=database, wait_s=600.0)
        print(f"  folded corpus bq-c{c}: {folded.seconds:.1f} s", flush=True)
    return {"graphs_written": written, "write_seconds": t_write, "seconds": time.perf_counter() - t0}


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": round(statistics.median(s) * 1e3, 2), "p95_ms": round(s[int(0.95 * (len(s) - 1))] * 1e3, 2),
            "max_ms": round(s[-1] * 1e3, 2), "n": len(s)}


def timed(fn, args_list: list, warmup: int = 10) -> dict:  # noqa: ANN001
    for a in args_list[:warmup]:
        fn(*a)
    out = []
    for a in args_list:
        t0 = time.perf_counter()
        fn(*a)
        out.append(time.perf_counter() - t0)
    return percentiles(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000 graphs x 5,000 edges (5M edges)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = ap.parse_args()
    settings = get_settings()
    db = settings.neo4j_database
    n_graphs = max(N_CORPORA, int(round(1000 * args.scale)))
    rng = random.Random(0)
    with neo4j_driver(settings) as driver:
        load_report = {} if args.skip_load else load(driver, n_graphs, db)
        load_before = [round(x, 2) for x in os.getloadavg()]
        stats = driver.execute_query(
            "MATCH (g:Graph) WHERE g.graph_id STARTS WITH 'bq-' AND g.status = 'complete' "
            "RETURN count(g) AS graphs, sum(g.n_edges) AS edges, sum(g.n_nodes) AS nodes", database_=db).records[0]
        db_edges = driver.execute_query("MATCH ()-[r:ATTR]->() RETURN count(r) AS c", database_=db).records[0]["c"]
        n_agg = driver.execute_query("MATCH ()-[r:AGG]->() RETURN count(r) AS c", database_=db).records[0]["c"]
        gids = [f"bq-{i:05d}" for i in range(min(n_graphs, stats["graphs"]))]
        local_args = []
        for _ in range(args.samples):
            g = rng.choice(gids)
            rec = synthetic_graph(int(g[3:]))
            feat = rng.choice([n.node_id for n in rec.nodes if n.kind == "feature" and n.layer == N_LAYERS - 1])
            local_args.append((driver, g, circuits.Pruning(target=feat)))
        # Tighter read-time pruning than the graph's size: the rank cut-offs are computed too.
        pruned_args = [(d, g, circuits.Pruning(max_nodes=100, max_edges=1_000, target=p.target))
                       for d, g, p in local_args]
        feats = [(r["f"], r["c"]) for r in driver.execute_query(
            "MATCH (f:Feature)-[o:OCCURS]->(c:Corpus) WHERE f.dictionary_set = $d AND o.n_graphs >= 2 "
            "RETURN f.fkey AS f, c.corpus_id AS c", d=DSET, database_=db).records]
        page_args = [(driver, *rng.choice(feats)) for _ in range(args.samples)]
        hottest = [(driver, r["f"], r["c"]) for r in driver.execute_query(
            "MATCH (f:Feature)-[o:OCCURS]->(c:Corpus) WHERE f.dictionary_set = $d "
            "RETURN f.fkey AS f, c.corpus_id AS c ORDER BY o.n DESC LIMIT 20", d=DSET, database_=db).records]
        report = {
            "host": platform.node(), "scale": args.scale, "graphs": stats["graphs"], "graph_edges": stats["edges"],
            "graph_nodes": stats["nodes"], "attr_edges_in_db": db_edges, "agg_edges_in_db": n_agg, "load": load_report,
            "local_circuit": timed(lambda d, g, p: circuits.circuit(d, g, p, database=db), local_args),
            "local_circuit_100_nodes_1000_edges": timed(lambda d, g, p: circuits.circuit(d, g, p, database=db),
                                                        pruned_args),
            "feature_page": timed(lambda d, f, c: features.feature_page(d, f, c, database=db), page_args),
            "feature_page_20_hottest": timed(lambda d, f, c: features.feature_page(d, f, c, database=db),
                                             hottest * max(1, args.samples // 40)),
            "aggregate_neighbours": timed(lambda d, f, c: global_circuits.aggregate_neighbours(
                d, f, c, "upstream", database=db), page_args),
            "aggregate_neighbours_all_corpora": timed(lambda d, f, c: global_circuits.aggregate_neighbours(
                d, f, None, "upstream", database=db), page_args[: max(20, args.samples // 4)]),
        }
    # The machine may be shared: the load average says how contended the CPU was while measuring.
    report["load_average_1_5_15_before"] = load_before
    report["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    report["cpus"] = os.cpu_count()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
