"""End-to-end pipeline throughput in prompts/min: a 200-prompt corpus of the zoo's three task families,
submitted through the library's submission path (the same one POST /corpora uses), computed by 1 and by 2
real `atlas worker` processes, timed from submission to the job's final state.

    python bench/pipeline_e2e.py [--prompts 200] [--workers 1 2] [--tiny]

The clock stops at the job's final state, which now comes after the corpus-done task folded the corpus
aggregates (workers/store/aggregates.py); ``aggregation_s`` is the part after the last prompt finished.

Uses the built zoo (gpt2-4l + its dictionaries; `ensure_zoo()` builds it if needed) or, with --tiny, the
tiny random GPT-2 of workers/pipeline/tiny_model.py with zoo-task prompts. Needs Neo4j and Redis up
(`atlas services up`); registers the model under a bench-specific id.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from service.demo import demo_prompts, start_worker_process, stop_worker_process  # noqa: E402
from workers.connections.neo4j import neo4j_driver  # noqa: E402
from workers.pipeline import jobs, registry  # noqa: E402
from workers.pipeline.compute import load_tokenizer  # noqa: E402
from workers.pipeline.config import get_pipeline_settings  # noqa: E402
from workers.pipeline.submit import submit_corpus  # noqa: E402
from workers.pipeline.validation import ValidatedCorpus, validate_prompts  # noqa: E402
from workers.settings import get_settings  # noqa: E402
from workers.tasks import enqueue_prompt  # noqa: E402


def corpus_examples(n: int, seed: int = 0) -> list:
    from workers.zoo.corpus import bracket_example, induction_example, ioi_example
    from workers.zoo.vocab import induction_symbols

    rng = random.Random(seed)
    per = -(-n // 3)
    return ([bracket_example(rng) for _ in range(per)] + [induction_example(rng, induction_symbols()) for _ in range(per)]
            + [ioi_example(rng) for _ in range(per)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tiny", action="store_true", help="the tiny random model instead of the zoo")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings, cfg = get_settings(), get_pipeline_settings()
    if args.tiny:
        from workers.pipeline.tiny_model import build_tiny_model

        model_dir, dict_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="atlas-bench-")))
    else:
        from workers.zoo.build import DICTIONARY_MODEL, ensure_zoo

        paths = ensure_zoo(settings)
        if paths.dictionaries is None:
            sys.exit(f"the zoo at {paths.root} has no dictionaries; rebuild it or pass --tiny")
        model_dir, dict_dir = paths.models[DICTIONARY_MODEL], paths.dictionaries
    results = []
    with neo4j_driver(settings) as driver:
        tag = uuid.uuid4().hex[:6]
        model = registry.register_model(driver, f"bench-{tag}", model_dir, settings.neo4j_database)
        dset = registry.register_dictionary_set(driver, f"bench-{tag}-d", dict_dir, model.model_id, settings.neo4j_database)
        tok = load_tokenizer(model)
        for n_workers in args.workers:
            items = demo_prompts(corpus_examples(args.prompts, seed=n_workers), per_task=10**9)[: args.prompts]
            prompts, tokens, dups = validate_prompts(items, tok, model.n_ctx, cfg)
            corpus = ValidatedCorpus(model.model_id, dset.dictionary_set_id, f"bench-{n_workers}", {"max_features": 200},
                                     prompts, tokens, dups)
            procs = [start_worker_process(settings, "gpu,cpu", f"bench{tag}-{n_workers}-{i}") for i in range(n_workers)]
            try:
                time.sleep(15)  # let the workers boot before the clock starts (their start-up is not throughput)
                t0 = time.perf_counter()
                created = submit_corpus(driver, corpus, enqueue_prompt, settings.neo4j_database)
                while True:
                    st = jobs.job_status(driver, created.job_id, settings.neo4j_database, max_failures=3)
                    if st["state"] in jobs.FINAL_JOB_STATES:
                        break
                    time.sleep(1)
                wall = time.perf_counter() - t0
            finally:
                for p in procs:
                    stop_worker_process(p)
            times = driver.execute_query("MATCH (j:Job {job_id: $j}) RETURN j.finished_at AS f, j.aggregated_at AS a",
                                         j=created.job_id, database_=settings.neo4j_database).records[0]
            edges = driver.execute_query("MATCH (g:Graph {corpus_id: $c}) RETURN sum(g.n_edges) AS e",
                                         c=created.corpus_id, database_=settings.neo4j_database).records[0]["e"]
            row = {"workers": n_workers, "prompts": len(prompts), "done": st["done"], "failed": st["failed"],
                   "seconds": round(wall, 1), "prompts_per_min": round(st["done"] / wall * 60, 1),
                   "aggregation_s": None if times["a"] is None else round(times["a"] - times["f"], 2),
                   "edges": edges, "loadavg_1m": round(os.getloadavg()[0], 2),
                   "model": "tiny" if args.tiny else "zoo gpt2-4l", "failures": st["failures"]}
            results.append(row)
            print(json.dumps(row), flush=True)
    env = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps({"environment": env}))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "environment": env}, indent=2))


if __name__ == "__main__":
    main()
