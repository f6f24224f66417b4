"""Job bookkeeping in the real Neo4j/Redis without workers: final states counted once, the job finishing
exactly when its counter reaches the total, prompts that keep dying failed after max_attempts."""

from __future__ import annotations

import logging
import time
import uuid

from tests.store.graphs import random_record
from workers.connections.redis import redis_client
from workers.pipeline import jobs
from workers.pipeline.compute import ModelCache, run_prompt
from workers.pipeline.config import PipelineSettings
from workers.store.aggregates import aggregate_state, fold_corpus
from workers.store.writer import write_graph


def _submit(client, model: str, dset: str, prompts: list) -> dict:  # noqa: ANN001
    r = client.post("/corpora", json={"model": model, "dictionary_set": dset, "prompts": prompts})
    assert r.status_code == 202, r.text
    return r.json()


def test_outcomes_count_once_and_the_last_one_finishes_the_job(client, neo4j_driver, registered):
    model, dset = registered
    acc = _submit(client, model, dset, ["the cat sat", "the dog ran", "a b c"])
    pids = [f"{acc['corpus_id']}-{i}" for i in range(3)]
    assert jobs.finish_prompt(neo4j_driver, pids[0], "done") == (True, False, 1)
    assert jobs.finish_prompt(neo4j_driver, pids[0], "done") == (False, False, 1)  # duplicate: not counted
    assert jobs.finish_prompt(neo4j_driver, pids[0], "failed") == (False, False, 1)  # a final state is final
    assert jobs.finish_prompt(neo4j_driver, pids[1], "failed", "boom") == (True, False, 1)
    assert jobs.finish_prompt(neo4j_driver, pids[2], "done") == (True, True, 2)
    st = client.get(acc["job_url"]).json()
    assert (st["state"], st["done"], st["failed"]) == ("complete_with_failures", 2, 1)
    assert st["failures"] == [{"prompt_id": pids[1], "index": 1, "error": "boom", "attempts": 0}]
    # A duplicate delivery of a finished prompt does nothing.
    assert jobs.start_prompt(neo4j_driver, pids[0], "w:1")[0] == "done"


def test_a_prompt_that_keeps_dying_is_failed_after_max_attempts(client, neo4j_driver, registered, settings):
    model, dset = registered
    acc = _submit(client, model, dset, ["the cat sat"])
    pid = f"{acc['corpus_id']}-0"
    cfg = PipelineSettings(max_attempts=2)
    for _ in range(2):  # two deliveries started and died
        assert jobs.start_prompt(neo4j_driver, pid, "w:1", max_attempts=2)[0] == "run"
    r = redis_client(settings)
    assert run_prompt(neo4j_driver, r, ModelCache(), cfg, pid) == "failed"
    st = client.get(acc["job_url"]).json()
    assert st["state"] == "complete_with_failures" and "started 2 times" in st["failures"][0]["error"]


def test_a_job_with_unfolded_graphs_waits_aggregating_until_they_are_folded(client, neo4j_driver, registered):
    model, dset = registered
    acc = _submit(client, model, dset, ["the cat sat", "the dog ran"])
    corpus = acc["corpus_id"]
    pids = [f"{corpus}-{i}" for i in range(2)]
    for i, pid in enumerate(pids):  # each prompt's graph stored as the pipeline does: without its aggregates
        rec = random_record(jobs.graph_id_for(pid), corpus, f"{corpus}-d", seed=i)
        write_graph(neo4j_driver, rec, fold=False)
    assert jobs.finish_prompt(neo4j_driver, pids[0], "done").job_finished is False
    assert jobs.finish_prompt(neo4j_driver, pids[1], "done") == (True, True, 2)
    assert client.get(acc["job_url"]).json()["state"] == "aggregating"
    assert jobs.finish_prompt(neo4j_driver, pids[1], "done").job_finished is False  # a duplicate: not again
    assert jobs.complete_aggregation(neo4j_driver, acc["job_id"]) == "aggregating"  # nothing folded yet
    assert fold_corpus(neo4j_driver, corpus).graphs == 2
    assert jobs.complete_aggregation(neo4j_driver, acc["job_id"]) == "complete"
    assert aggregate_state(neo4j_driver, corpus)["folded"] == 2
    assert client.get(acc["job_url"]).json()["state"] == "complete"
    assert jobs.complete_aggregation(neo4j_driver, acc["job_id"]) == "complete"  # idempotent


def test_job_queries_do_not_log_unknown_property_warnings(neo4j_driver, caplog):
    never = f"never_set_{uuid.uuid4().hex[:8]}"  # a property key this database has never seen
    query = f"MATCH (j:Job) WHERE j.{never} IS NOT NULL RETURN count(j) AS c"
    with caplog.at_level(logging.INFO, logger="neo4j.notifications"):
        neo4j_driver.execute_query(query)
    assert never in caplog.text  # the server does warn about it, and the driver logs the warning ...
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neo4j.notifications"):
        assert jobs.quiet_records(neo4j_driver, query, None, write=False)[0]["c"] == 0
    assert caplog.records == []  # ... but not for the job queries


def test_reaper_resends_the_corpus_done_task_of_a_job_stuck_aggregating(client, neo4j_driver, redis_client,
                                                                       registered):
    from workers.pipeline.reaper import reap_once, stuck_aggregations

    model, dset = registered
    acc = _submit(client, model, dset, ["the cat sat"])
    pid = f"{acc['corpus_id']}-0"
    write_graph(neo4j_driver, random_record(jobs.graph_id_for(pid), acc["corpus_id"], "d", seed=3), fold=False)
    assert jobs.finish_prompt(neo4j_driver, pid, "done").job_finished  # its corpus-done message "lost"
    assert acc["job_id"] not in stuck_aggregations(neo4j_driver, stale_after_s=60)  # not stale yet
    neo4j_driver.execute_query("MATCH (j:Job {job_id: $j}) SET j.finished_at = j.finished_at - 120", j=acc["job_id"])
    # A folder at work on the corpus (live lease): nothing to re-send.
    neo4j_driver.execute_query("MERGE (f:AggFold {corpus_id: $c}) SET f.writer = 'busy', f.lease_until = $t",
                               c=acc["corpus_id"], t=time.time() + 60)
    assert acc["job_id"] not in stuck_aggregations(neo4j_driver, stale_after_s=60)
    neo4j_driver.execute_query("MATCH (f:AggFold {corpus_id: $c}) SET f.lease_until = $t", c=acc["corpus_id"],
                               t=time.time() - 1)
    sent: list[str] = []
    assert reap_once(neo4j_driver, redis_client, lambda *a: None, 60, enqueue_finish=sent.append) == []
    assert acc["job_id"] in sent
    fold_corpus(neo4j_driver, acc["corpus_id"])  # what the re-sent task does, then the job completes
    assert jobs.complete_aggregation(neo4j_driver, acc["job_id"]) == "complete"
    assert acc["job_id"] not in stuck_aggregations(neo4j_driver, stale_after_s=60)
