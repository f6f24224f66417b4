"""Service restarts under a running pipeline (real processes): Neo4j restarted mid-job -> the job
completes, each graph once; Redis restarted (appendonly) with work queued -> nothing lost."""

from __future__ import annotations

from tests.pipeline.checks import assert_aggregates_match_stored_edges, assert_each_graph_once
from tests.pipeline.conftest import wait_for
from tests.pipeline.test_workers import PROMPTS, _running_worker_pid, finished, submit


def test_redis_restart_with_work_queued_loses_nothing(client, neo4j_driver, registered, worker_factory, settings):
    from service.runtime import redis as redis_runtime

    model, dset = registered
    acc = submit(client, model, dset, PROMPTS)  # no worker yet: four tasks wait in Redis
    assert redis_runtime.stop(settings), "the test Redis is not ours to restart (an external Redis?)"
    redis_runtime.start(settings)
    worker_factory()
    st = wait_for(lambda: finished(client, acc), 120, "the queued corpus to finish after the Redis restart")
    assert st["state"] == "complete" and st["done"] == 4
    assert_each_graph_once(neo4j_driver, acc["corpus_id"])


def test_neo4j_restart_during_a_job_completes_it(client, neo4j_driver, registered, worker_factory, settings):
    from service.runtime import neo4j as neo4j_runtime

    model, dset = registered
    worker_factory({"ATLAS_PIPELINE_FAULT_DELAY_S": "1.0"})
    acc = submit(client, model, dset, PROMPTS)
    wait_for(lambda: _running_worker_pid(neo4j_driver, acc["corpus_id"]), 90, "a running prompt")
    assert neo4j_runtime.stop(settings), "the test Neo4j is not ours to restart"
    neo4j_runtime.start(settings)
    st = wait_for(lambda: finished(client, acc), 180, "the corpus to finish after the Neo4j restart", every_s=1.0)
    assert st["state"] == "complete" and st["done"] == 4
    assert_each_graph_once(neo4j_driver, acc["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, acc["corpus_id"])
