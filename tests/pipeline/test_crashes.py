"""Crashes and duplicates with real processes, each compared against a clean run of the same prompts (the same
node ids per prompt, edge weights to float tolerance, the corpus aggregates' sums), not only counted:

- the worker's whole process group SIGKILLed in the middle of a graph write, then the real `atlas reaper`
  process and a new worker: no graph left half-written, each graph once, no attempt spent waiting out the
  dead writer's lease;
- a duplicate delivery of a prompt another worker is writing: the prompt ends done, one graph, one attempt;
- a prompt over the Celery soft time limit: failed with that reason, and the job still completes;
- the reaper never takes a live slow prompt for dead.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time

from tests.pipeline.checks import assert_aggregates_match_stored_edges, assert_each_graph_once
from tests.pipeline.conftest import stop_worker, wait_for
from tests.pipeline.test_workers import PROMPTS, finished, submit

# Fast liveness for these tests: a beat every 0.5 s, stale after 3 s (the reaper and the workers agree).
LIVENESS = {"ATLAS_PIPELINE_HEARTBEAT_S": "0.5", "ATLAS_PIPELINE_STALE_AFTER_S": "3"}


def stored_graphs(driver, corpus_id: str, n: int) -> dict[int, dict]:  # noqa: ANN001
    """Per prompt index: its complete graph's node ids and edges (source node id, target node id) -> w."""
    out = {}
    for i in range(n):
        gid = f"g-{corpus_id}-{i}"
        nodes = driver.execute_query("MATCH (n:Node {graph_id: $g}) RETURN n.node_id AS id", g=gid).records
        edges = driver.execute_query("MATCH (a:Node {graph_id: $g})-[r:ATTR]->(b:Node) "
                                     "RETURN a.node_id AS s, b.node_id AS d, r.w AS w", g=gid).records
        out[i] = {"nodes": sorted(r["id"] for r in nodes), "edges": {(r["s"], r["d"]): r["w"] for r in edges}}
    return out


def aggregate_sums(driver, corpus_id: str) -> dict[tuple[str, str], tuple[float, float, int]]:  # noqa: ANN001
    recs = driver.execute_query("MATCH (a:Feature)-[e:AGG {corpus: $c}]->(b:Feature) "
                                "RETURN a.fkey AS s, b.fkey AS d, e.sum_w AS w, e.sum_abs_w AS aw, e.n AS n",
                                c=corpus_id).records
    return {(r["s"], r["d"]): (r["w"], r["aw"], r["n"]) for r in recs}


def assert_same_as_clean_run(driver, clean: str, other: str, n: int) -> None:  # noqa: ANN001
    a, b = stored_graphs(driver, clean, n), stored_graphs(driver, other, n)
    for i in range(n):
        assert b[i]["nodes"] == a[i]["nodes"] and len(a[i]["nodes"]) > 0, f"prompt {i}: node ids differ"
        assert b[i]["edges"].keys() == a[i]["edges"].keys(), f"prompt {i}: edges differ"
        for k, w in a[i]["edges"].items():
            assert math.isclose(b[i]["edges"][k], w, rel_tol=1e-6, abs_tol=1e-9), (i, k, w, b[i]["edges"][k])
    agg_a, agg_b = aggregate_sums(driver, clean), aggregate_sums(driver, other)
    assert agg_b.keys() == agg_a.keys() and len(agg_a) > 0
    for k, (w, aw, cnt) in agg_a.items():
        assert agg_b[k][2] == cnt and math.isclose(agg_b[k][0], w, rel_tol=1e-6, abs_tol=1e-9) \
            and math.isclose(agg_b[k][1], aw, rel_tol=1e-6, abs_tol=1e-9), (k, agg_a[k], agg_b[k])


def nothing_half_written(driver, corpus_id: str) -> None:  # noqa: ANN001
    unfinished = driver.execute_query("MATCH (g:Graph {corpus_id: $c}) WHERE g.status <> 'complete' "
                                      "RETURN count(g) AS n", c=corpus_id).records[0]["n"]
    orphans = driver.execute_query(
        "MATCH (n:Node) WHERE n.graph_id STARTS WITH $g OPTIONAL MATCH (g:Graph {graph_id: n.graph_id}) "
        "WITH n, g WHERE g IS NULL OR g.status <> 'complete' RETURN count(n) AS c", g=f"g-{corpus_id}-").records
    assert (unfinished, orphans[0]["c"]) == (0, 0)


def graph_mid_write(driver, corpus_id: str, group: int | None = None) -> str | None:  # noqa: ANN001
    """A graph of the corpus being written with some of its nodes committed and none of its edges (by a worker
    of process group ``group``, if given)."""
    recs = driver.execute_query(
        "MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'writing' "
        "MATCH (p:Prompt {prompt_id: g.prompt_id}) "
        "CALL (g) { MATCH (n:Node {graph_id: g.graph_id}) RETURN count(n) AS nodes } "
        "CALL (g) { MATCH (:Node {graph_id: g.graph_id})-[r:ATTR]->() RETURN count(r) AS edges } "
        "WITH g, p, nodes, edges WHERE nodes > 0 AND edges = 0 RETURN g.graph_id AS g, p.worker AS w",
        c=corpus_id).records
    for rec in recs:
        pid = int(rec["w"].rsplit(":", 1)[1])
        try:
            if group is None or os.getpgid(pid) == group:
                return rec["g"]
        except ProcessLookupError:
            continue
    return None


def start_reaper(extra_env: dict[str, str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "service.cli", "reaper", "--interval-s", "1"]
    return subprocess.Popen(argv, env={**os.environ, **extra_env}, stdin=subprocess.DEVNULL, start_new_session=True)


def prompt_row(driver, prompt_id: str) -> dict:  # noqa: ANN001
    return driver.execute_query("MATCH (p:Prompt {prompt_id: $p}) RETURN p {.*} AS p", p=prompt_id).records[0]["p"]


def test_worker_group_killed_mid_write_recovers_to_the_clean_run(client, neo4j_driver, registered, worker_factory,
                                                                  unique_id):
    from workers.celery_app import celery_app

    model, dset = registered
    prompts = [*PROMPTS, "when alice and bob went to the park", "the dog sat on the mat and the cat"]
    clean_worker = worker_factory()
    clean = submit(client, model, dset, prompts)
    st = wait_for(lambda: finished(client, clean), 120, "the clean run")
    assert st["state"] == "complete"
    stop_worker(clean_worker)

    # The dead writer's lease (20 s) outlives the reaper's staleness (3 s): the re-enqueued prompt must wait it
    # out without spending attempts (before the fix: failed, "started 3 times", graph left 'writing'). The second
    # worker is up before the kill, so the re-enqueued prompt reaches it while that lease is surely live. Both
    # workers answer before the corpus is submitted: the victim takes one of the first prompts whatever the
    # machine's speed (started after the submission, the second worker once found every prompt written).
    victim = worker_factory({**LIVENESS, "ATLAS_PIPELINE_FAULT_WRITE_DELAY_S": "1.5",
                             "ATLAS_PIPELINE_GRAPH_LEASE_S": "20"})
    worker_factory(LIVENESS)
    for i in (1, 2):
        name = f"{unique_id}-{i}@{socket.gethostname()}"
        wait_for(lambda name=name: celery_app.control.ping(destination=[name], timeout=1.0), 90, f"worker {name}")
    crash = submit(client, model, dset, prompts)
    graph_id = wait_for(lambda: graph_mid_write(neo4j_driver, crash["corpus_id"], victim.pid), 120,
                        "a graph mid-write by the first worker")
    os.killpg(victim.pid, signal.SIGKILL)  # main process and pool child together
    victim.wait(10)
    assert graph_mid_write(neo4j_driver, crash["corpus_id"]) == graph_id  # really half-written when killed
    reaper = start_reaper(LIVENESS)
    try:
        st = wait_for(lambda: finished(client, crash), 180, "the corpus to finish after the kill", every_s=0.5)
    finally:
        reaper.send_signal(signal.SIGINT)
        try:
            reaper.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(reaper.pid, signal.SIGKILL)
            reaper.wait(5)
    assert (st["state"], st["done"], st["failed"]) == ("complete", len(prompts), 0), st
    killed = prompt_row(neo4j_driver, graph_id[2:])
    assert (killed["attempts"], killed["reaped"]) == (2, 1)  # killed once, re-enqueued once by the reaper
    nothing_half_written(neo4j_driver, crash["corpus_id"])
    assert_each_graph_once(neo4j_driver, crash["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, crash["corpus_id"])
    assert_same_as_clean_run(neo4j_driver, clean["corpus_id"], crash["corpus_id"], len(prompts))


def test_duplicate_delivery_of_a_prompt_being_written_changes_nothing(client, neo4j_driver, registered, worker_factory,
                                                                      unique_id):
    from workers.celery_app import celery_app
    from workers.pipeline import jobs
    from workers.tasks import enqueue_prompt

    model, dset = registered
    # Two idle workers: one takes the prompt, the other is free to take the duplicate at once.
    for i in range(2):
        worker_factory({**LIVENESS, "ATLAS_PIPELINE_FAULT_WRITE_DELAY_S": "2.0"})
        name = f"{unique_id}-{i}@{socket.gethostname()}"
        wait_for(lambda name=name: celery_app.control.ping(destination=[name], timeout=1.0), 90, f"worker {name}")
    acc = submit(client, model, dset, PROMPTS[:1])
    prompt_id = f"{acc['corpus_id']}-0"
    wait_for(lambda: graph_mid_write(neo4j_driver, acc["corpus_id"]), 90, "the first delivery's write")
    enqueued_at = time.time()
    enqueue_prompt(jobs.job_id_of(prompt_id), prompt_id, 9)  # as the reaper would, or a broker redelivery
    duplicate = celery_app.AsyncResult(jobs.task_id_for(jobs.job_id_of(prompt_id), prompt_id, 9))
    assert duplicate.get(timeout=120) == "done"  # it waited for the live delivery and found the prompt done
    st = finished(client, acc)
    assert st is not None and (st["state"], st["done"], st["failed"]) == ("complete", 1, 0)
    row = prompt_row(neo4j_driver, prompt_id)
    assert row["finished_at"] > enqueued_at + 1  # the duplicate arrived while the prompt was being written
    assert row["attempts"] == 1  # the duplicate never started it
    assert_each_graph_once(neo4j_driver, acc["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, acc["corpus_id"])


def test_soft_time_limit_fails_the_prompt_and_the_job_completes(client, neo4j_driver, registered, worker_factory,
                                                                 settings):
    """The time limits travel in each task message (Celery takes them from the sender's configuration, not the
    worker's), so the prompts are sent here as the API sends them, with a 2 s soft limit."""
    from workers.celery_app import GPU_QUEUE, celery_app
    from workers.pipeline import jobs, registry
    from workers.pipeline.compute import load_tokenizer
    from workers.pipeline.submit import submit_corpus
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus
    from workers.tasks import compute_prompt

    model, dset = registered
    db = settings.neo4j_database
    tok = load_tokenizer(registry.get_model(neo4j_driver, model, db))
    texts = [p if isinstance(p, str) else p["text"] for p in PROMPTS[:2]]
    corpus = ValidatedCorpus(model_id=model, dictionary_set_id=dset, name="soft-limit", settings={},
                             prompts=[PromptSpec(text=t) for t in texts], tokens=[tok(t)["input_ids"] for t in texts],
                             duplicates=[])

    def enqueue(job_id: str, prompt_id: str, round_: int) -> None:  # the first prompt may take 60 s, the last 2 s
        compute_prompt.apply_async(args=[prompt_id], task_id=jobs.task_id_for(job_id, prompt_id, round_),
                                   queue=GPU_QUEUE, soft_time_limit=60 if prompt_id.endswith("-0") else 2,
                                   time_limit=90)

    created = submit_corpus(neo4j_driver, corpus, enqueue, db)
    worker_factory({"ATLAS_PIPELINE_FAULT_DELAY_S": "4"})  # each prompt sleeps 4 s: the last one past its limit
    # The over-limit prompt is the job's last: its handler must record it AND send the corpus-done task (the
    # first prompt's graph waits to be folded), else the job stays 'aggregating'.
    last = celery_app.AsyncResult(jobs.task_id_for(created.job_id, created.prompt_ids[1]))
    assert last.get(timeout=120) == "failed"  # the handler returned; it did not raise
    st = wait_for(lambda: (s := jobs.job_status(neo4j_driver, created.job_id, db))["state"] in jobs.FINAL_JOB_STATES
                  and s, 60, "the job to complete")
    assert (st["state"], st["done"], st["failed"]) == ("complete_with_failures", 1, 1)
    assert [f["index"] for f in st["failures"]] == [1] and "soft time limit of 2s" in st["failures"][0]["error"]
    assert_aggregates_match_stored_edges(neo4j_driver, created.corpus_id)
    nothing_half_written(neo4j_driver, created.corpus_id)


def test_reaper_leaves_a_live_slow_prompt_alone(client, neo4j_driver, redis_client, registered, worker_factory):
    from workers.pipeline.reaper import reap_once

    model, dset = registered
    worker_factory({**LIVENESS, "ATLAS_PIPELINE_FAULT_DELAY_S": "8"})  # 8 s on one prompt: far past 3 s stale
    acc = submit(client, model, dset, PROMPTS[:1])
    prompt_id = f"{acc['corpus_id']}-0"
    wait_for(lambda: prompt_row(neo4j_driver, prompt_id)["state"] == "running", 90, "the prompt to start")
    passes = 0
    while prompt_row(neo4j_driver, prompt_id)["state"] == "running":
        # (the database is shared with earlier tests: only this test's prompt is the reaper's to leave alone)
        assert prompt_id not in reap_once(neo4j_driver, redis_client, lambda *a: None, stale_after_s=3.0)
        passes += 1
        time.sleep(0.5)
    assert passes >= 10  # the reaper looked at the live prompt for 5 s and more
    st = wait_for(lambda: finished(client, acc), 60, "the job")
    assert st["state"] == "complete" and prompt_row(neo4j_driver, prompt_id)["reaped"] == 0
