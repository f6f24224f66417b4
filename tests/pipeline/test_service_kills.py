"""The services themselves SIGKILLed under a running pipeline (no clean shutdown, no checkpoint), then
restarted; each run is compared with a clean run of the same prompts (tests/pipeline/test_crashes.py)."""

from __future__ import annotations

import os
import signal
import time

from service.runtime.processes import process_cmdline
from tests.pipeline.checks import assert_aggregates_match_stored_edges, assert_each_graph_once
from tests.pipeline.conftest import stop_worker, wait_for
from tests.pipeline.test_crashes import LIVENESS, assert_same_as_clean_run, nothing_half_written
from tests.pipeline.test_workers import PROMPTS, finished, submit


def _sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Dead or a zombie: a server started by `atlas services up` is an orphan, and its new parent (the
        # machine's init) may reap it late, so `os.kill(pid, 0)` would still succeed.
        if process_cmdline(pid) is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def _kill_neo4j_and_expect_the_clean_run(client, neo4j_driver, settings, clean: dict, crash: dict,  # noqa: ANN001
                                         graph_id: str) -> None:
    """SIGKILL Neo4j, keep it down 4 s, restart it (crash recovery from its transaction log); then the crash run
    completes, ``graph_id``'s prompt records a retry (not an attempt), and everything equals the clean run."""
    from service.runtime import neo4j as neo4j_runtime
    from service.runtime.processes import read_pid_file
    from tests.pipeline.test_crashes import prompt_row

    pid = read_pid_file(neo4j_runtime.Neo4jPaths.from_settings(settings).pid_file)
    assert pid is not None
    try:
        _sigkill(pid)
        time.sleep(4.0)
    finally:
        neo4j_runtime.start(settings)  # recovers from the transaction log (and leaves the suite a Neo4j either way)
    st = wait_for(lambda: finished(client, crash), 300, "the corpus to finish after the Neo4j kill", every_s=1.0)
    assert (st["state"], st["done"], st["failed"]) == ("complete", len(PROMPTS), 0), st
    killed = prompt_row(neo4j_driver, graph_id[2:])
    assert killed["attempts"] == 1 and killed["retries"] >= 1, killed  # a retry, not a new attempt
    nothing_half_written(neo4j_driver, crash["corpus_id"])
    assert_each_graph_once(neo4j_driver, crash["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, crash["corpus_id"])
    assert_same_as_clean_run(neo4j_driver, clean["corpus_id"], crash["corpus_id"], len(PROMPTS))


def _clean_run(client, model: str, dset: str, worker_factory) -> dict:  # noqa: ANN001
    worker = worker_factory()
    clean = submit(client, model, dset, PROMPTS)
    st = wait_for(lambda: finished(client, clean), 120, "the clean run")
    assert st["state"] == "complete"
    stop_worker(worker)
    return clean


def test_redis_sigkilled_with_a_task_unacknowledged_and_others_queued_loses_nothing(
        client, neo4j_driver, redis_client, registered, worker_factory, settings):
    from service.runtime import redis as redis_runtime
    from service.runtime.processes import read_pid_file
    from workers.connections.redis import redis_client as make_redis_client

    model, dset = registered
    clean = _clean_run(client, model, dset, worker_factory)
    worker_factory({**LIVENESS, "ATLAS_PIPELINE_FAULT_DELAY_S": "6"})  # holds its one task for 6 s
    crash = submit(client, model, dset, PROMPTS)
    wait_for(lambda: neo4j_driver.execute_query(
        "MATCH (p:Prompt {corpus_id: $c}) WHERE p.state = 'running' RETURN count(p) AS n",
        c=crash["corpus_id"]).records[0]["n"] == 1, 90, "one running prompt")
    queued_before = redis_client.llen("gpu")
    unacked_before = redis_client.hlen("unacked")
    assert queued_before >= len(PROMPTS) - 1 and unacked_before >= 1  # (earlier tests may have left some)
    time.sleep(1.5)  # appendfsync everysec: what was queued a second ago is on disk
    pid = read_pid_file(redis_runtime.RedisPaths.from_settings(settings).pid_file)
    assert pid is not None
    try:
        _sigkill(pid)
    finally:
        redis_runtime.start(settings)  # replays the append-only file (and leaves the suite a Redis either way)
    fresh = make_redis_client(settings)  # a new connection, after the restart
    assert (fresh.llen("gpu"), fresh.hlen("unacked")) == (queued_before, unacked_before)  # nothing lost or added
    fresh.close()
    st = wait_for(lambda: finished(client, crash), 180, "the corpus to finish after the Redis kill", every_s=1.0)
    assert (st["state"], st["done"], st["failed"]) == ("complete", len(PROMPTS), 0), st
    nothing_half_written(neo4j_driver, crash["corpus_id"])
    assert_each_graph_once(neo4j_driver, crash["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, crash["corpus_id"])
    assert_same_as_clean_run(neo4j_driver, clean["corpus_id"], crash["corpus_id"], len(PROMPTS))


def test_neo4j_sigkilled_mid_graph_write_recovers_to_the_clean_run(client, neo4j_driver, registered, worker_factory,
                                                                   settings):
    """Neo4j SIGKILLed while a graph is half-written (nodes committed, no edges, the writer between two batch
    transactions) and kept down past the worker driver's own retry window, then restarted (crash recovery from
    its transaction log): the writer's next batch fails, the task retries (recorded in the prompt's
    ``retries``, not counted as an attempt), takes over its own graph and writes it again from scratch."""
    from tests.pipeline.test_crashes import graph_mid_write

    model, dset = registered
    clean = _clean_run(client, model, dset, worker_factory)
    worker_factory({"ATLAS_PIPELINE_FAULT_WRITE_DELAY_S": "2.0", "ATLAS_PIPELINE_NEO4J_RETRY_S": "1"})
    crash = submit(client, model, dset, PROMPTS)
    graph_id = wait_for(lambda: graph_mid_write(neo4j_driver, crash["corpus_id"]), 120, "a graph mid-write")
    # (4 s down: past the writer's next batch (2 s) and its driver's retry window (1 s): the task retries)
    _kill_neo4j_and_expect_the_clean_run(client, neo4j_driver, settings, clean, crash, graph_id)


def _open_edge_batches(driver, database: str) -> set[str]:  # noqa: ANN001
    """Ids of the writers' edge batch transactions open now (tagged atlas_batch = 'edges' by the writer)."""
    return {r["id"] for r in driver.execute_query(
        "SHOW TRANSACTIONS YIELD transactionId AS id, metaData WHERE metaData.atlas_batch = 'edges' RETURN id",
        database_=database).records}


def test_neo4j_sigkilled_with_a_graph_write_transaction_open_recovers_to_the_clean_run(
        client, neo4j_driver, registered, worker_factory, settings):
    """Neo4j SIGKILLed while an edge batch transaction is open, its edges created and not committed (the writer
    sleeps 4 s inside it), then restarted: recovery discards the open transaction, the writer's commit fails, the
    task retries (a retry, not an attempt), takes over its own graph and writes it again; the result equals the
    clean run. (test_neo4j_sigkilled_mid_graph_write_recovers_to_the_clean_run kills between two transactions.)"""
    from tests.pipeline.test_crashes import graph_mid_write

    db = settings.neo4j_database
    model, dset = registered
    clean = _clean_run(client, model, dset, worker_factory)
    worker_factory({"ATLAS_PIPELINE_FAULT_TX_DELAY_S": "4.0", "ATLAS_PIPELINE_NEO4J_RETRY_S": "1"})
    crash = submit(client, model, dset, PROMPTS)
    open_tx = wait_for(lambda: _open_edge_batches(neo4j_driver, db), 120, "an open edge batch transaction",
                       every_s=0.1)
    time.sleep(1.0)  # its CREATE (a few hundred edges) has run; the transaction sleeps 4 s before committing
    assert _open_edge_batches(neo4j_driver, db) & open_tx, "the edge batch committed before the kill"
    graph_id = graph_mid_write(neo4j_driver, crash["corpus_id"])  # nodes committed, its edges not
    assert graph_id is not None
    # (4 s down: past the transaction's sleep and the driver's retry window (1 s): the task retries)
    _kill_neo4j_and_expect_the_clean_run(client, neo4j_driver, settings, clean, crash, graph_id)
