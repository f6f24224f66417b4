"""Disk bytes per stored graph, node and edge in Neo4j, and stored nodes/edges per prompt at the default
pruning (node 0.8, edge 0.98), for docs/capacity.md.

    python bench/store_size.py [--prompts 60] [--budget N]

Runs the engine on the zoo's gpt2-4l with its dictionaries (``ensure_zoo()``) over zoo-task prompts
(bench/pipeline_e2e.py's mix), prunes with the defaults, writes every graph with the project's writer, folds
the corpus aggregates, and reports the growth of each store file of the database (transaction logs
separately: they are rotated and pruned, not kept). Neo4j Community has no checkpoint procedure, so the
script stops the services (a clean shutdown checkpoints) before each measurement with ``atlas services
down`` / ``up``: run it against a scratch state directory (ATLAS_STATE_DIR, ports of your own); it deletes
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _sizes(db_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in db_dir.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(db_dir))] = p.stat().st_size
    return out


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.pipeline_e2e import corpus_examples
    from service.runtime.neo4j import Neo4jPaths
    from workers.connections.neo4j import neo4j_driver
    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine import AttributionSettings, Linearised, attribute, prune
    from workers.settings import get_settings
    from workers.store.aggregates import fold_corpus
    from workers.store.from_engine import graph_to_record
    from workers.store.writer import write_graph
    from workers.zoo.build import ensure_zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--budget", type=int, default=None, help="max_feature_nodes (default: none)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    settings = get_settings()
    zoo = ensure_zoo(progress=False)
    model = AutoModelForCausalLM.from_pretrained(zoo.models["gpt2-4l"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(zoo.models["gpt2-4l"])
    lin = Linearised(model, load_dictionary_set(zoo.dictionaries, model))
    examples = corpus_examples(a.prompts)  # the three task families, a third each
    db = settings.neo4j_database
    db_dir = Neo4jPaths.from_settings(settings).data / "databases" / (db or "neo4j")
    subprocess.run(["atlas", "services", "down"], check=True, capture_output=True)
    before = _sizes(db_dir)
    subprocess.run(["atlas", "services", "up"], check=True, capture_output=True)
    driver = neo4j_driver(settings)
    corpus = f"size-{uuid.uuid4().hex[:8]}"
    n_nodes = n_edges = n_edges_unpruned = n_tokens = 0
    t0 = time.time()
    for i, ex in enumerate(examples):
        text = ex.prompt if hasattr(ex, "prompt") else ex["prompt"]
        g = attribute(lin, text, ["top"], tokenizer=tok,
                      settings=AttributionSettings(max_feature_nodes=a.budget))
        pr = prune(g)
        rec = graph_to_record(g, graph_id=f"{corpus}-g{i}", prompt_id=f"{corpus}-p{i}", corpus_id=corpus,
                              model="gpt2-4l", dictionary_set="zoo", pruned=pr)
        write_graph(driver, rec, database=db, fold=False)
        n_nodes += len(rec.nodes)
        n_edges += len(rec.edge_w)
        n_edges_unpruned += int(g.adjacency.values().numel())
        n_tokens += len(g.tokens)
    seconds_write = time.time() - t0
    t0 = time.time()
    fold_corpus(driver, corpus, database=db)
    seconds_fold = time.time() - t0
    n_agg = driver.execute_query("MATCH ()-[r:AGG {corpus: $c}]->() RETURN count(r) AS n", c=corpus,
                                 database_=db).records[0]["n"]
    driver.close()
    subprocess.run(["atlas", "services", "down"], check=True, capture_output=True)
    after = _sizes(db_dir)
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}
    tx = sum(v for k, v in grew.items() if "transaction" in k)
    store = sum(v for k, v in grew.items() if "transaction" not in k)
    n = len(examples)
    res = {
        "prompts": n, "mean_tokens": n_tokens / n, "budget": a.budget,
        "nodes_per_prompt": n_nodes / n, "edges_per_prompt": n_edges / n,
        "edges_per_prompt_unpruned": n_edges_unpruned / n, "agg_pairs": n_agg,
        "store_bytes": store, "store_bytes_per_prompt": store / n,
        "store_bytes_per_edge_all_included": store / max(n_edges, 1),
        "transaction_log_bytes": tx,
        "files_grown": {k: v for k, v in grew.items() if v},
        "seconds_compute_and_write": seconds_write, "seconds_fold": seconds_fold,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
