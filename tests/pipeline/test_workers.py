"""The corpus pipeline end to end with real worker subprocesses on the real Redis and Neo4j: graphs stored
once, aggregates once, progress and failures reported, a SIGKILLed worker's prompt redelivered, a
cancelled job leaving nothing half-written, the reaper re-enqueueing a prompt whose worker vanished."""

from __future__ import annotations

import os
import signal

from tests.pipeline.checks import (
    assert_aggregates_match_stored_edges,
    assert_each_graph_once,
    assert_stored_rows_complete,
)
from tests.pipeline.conftest import wait_for

PROMPTS = [
    {"text": "the cat sat on the mat", "targets": ["top"]},
    {"text": "alice and bob went to the store", "targets": [{"logit": "the"}]},
    {"text": "( [ ] )", "targets": ["diff:the,a"]},
    "the dog ran to the park and the cat",
]


def submit(client, model: str, dset: str, prompts: list, **settings) -> dict:  # noqa: ANN001
    r = client.post("/corpora", json={"model": model, "dictionary_set": dset, "prompts": prompts, "settings": settings})
    assert r.status_code == 202, r.text
    return r.json()


def job(client, acc: dict) -> dict:  # noqa: ANN001
    return client.get(acc["job_url"]).json()


def finished(client, acc: dict) -> dict | None:  # noqa: ANN001
    st = job(client, acc)
    return st if st["state"] in ("complete", "complete_with_failures", "cancelled") else None


def test_corpus_completes_with_graphs_aggregates_progress_and_failures(client, neo4j_driver, registered, worker_factory):
    model, dset = registered
    worker_factory()
    bad = {"text": "the cat sat", "targets": ["logit:999999"]}  # a token id outside the vocabulary
    acc = submit(client, model, dset, [*PROMPTS, bad], max_features=20)
    st = wait_for(lambda: finished(client, acc), 120, "the corpus to finish")
    assert st["state"] == "complete_with_failures"
    assert (st["done"], st["failed"], st["total"]) == (4, 1, 5)
    assert st["throughput_per_min"] > 0 and st["eta_s"] is None
    assert [f["index"] for f in st["failures"]] == [4] and "999999" in st["failures"][0]["error"]
    failed_prompt = st["failures"][0]["prompt_id"]
    per = neo4j_driver.execute_query("MATCH (g:Graph {corpus_id: $c}) RETURN g.prompt_id AS p, g.status AS s",
                                     c=acc["corpus_id"]).records
    assert sorted(r["p"] for r in per) == sorted(f"{acc['corpus_id']}-{i}" for i in range(4))
    assert failed_prompt not in {r["p"] for r in per}
    n_feat = neo4j_driver.execute_query(
        "MATCH (g:Graph {corpus_id: $c}) MATCH (n:Feat {graph_id: g.graph_id}) RETURN g.graph_id AS g, count(n) AS k",
        c=acc["corpus_id"]).records
    assert all(r["k"] <= 20 for r in n_feat)  # max_features honoured
    # Nodes carry activation and influence; the Graph its metrics and provenance.
    g = neo4j_driver.execute_query("MATCH (g:Graph {graph_id: $g}) RETURN g", g=f"g-{acc['corpus_id']}-0").records[0]["g"]
    assert '"replacement_pruned"' in g["metrics"] and '"model_hash"' in g["provenance"]
    unset = neo4j_driver.execute_query("MATCH (n:Feat {graph_id: $g}) WHERE n.activation IS NULL OR n.influence IS NULL "
                                       "RETURN count(n) AS c", g=g["graph_id"]).records[0]["c"]
    assert unset == 0
    # Exactly-once aggregates; the corpus-done step (cpu queue) ran after the counter reached the total.
    done_prompts = [f"{acc['corpus_id']}-{i}" for i in range(4)]
    assert all(s == ["complete"] for p, s in _graphs(neo4j_driver, acc).items() if p in done_prompts)
    assert assert_aggregates_match_stored_edges(neo4j_driver, acc["corpus_id"]) > 0
    summary = wait_for(lambda: neo4j_driver.execute_query(
        "MATCH (c:Corpus {corpus_id: $c}) WHERE c.n_graphs IS NOT NULL RETURN c.n_graphs AS n",
        c=acc["corpus_id"]).records, 60, "the corpus summary")
    assert summary[0]["n"] == 4


def test_node_budget_setting_reaches_the_engine_and_stored_rows_stay_complete(client, neo4j_driver, registered,
                                                                               worker_factory):
    """``max_feature_nodes`` bounds the rows computed; the unexpanded features are stored as :Unexp leaves,
    so (unpruned) each target's and each expanded feature's stored in-edges sum to its value."""
    import json

    model, dset = registered
    worker_factory()
    acc = submit(client, model, dset, ["the dog ran to the park and the cat"], max_feature_nodes=6, prune=False)
    st = wait_for(lambda: finished(client, acc), 120, "the corpus to finish")
    assert st["state"] == "complete" and st["settings"]["max_feature_nodes"] == 6
    gid = f"g-{acc['corpus_id']}-0"
    g = neo4j_driver.execute_query("MATCH (g:Graph {graph_id: $g}) RETURN g", g=gid).records[0]["g"]
    budget = json.loads(g["provenance"])["budget"]
    assert budget["expanded_features"] == 6 < budget["active_features"] and budget["unexpanded_leaves"] > 0
    n_leaves = neo4j_driver.execute_query("MATCH (n:Unexp {graph_id: $g}) RETURN count(n) AS c", g=gid).records[0]["c"]
    assert n_leaves == budget["unexpanded_leaves"]
    rows = neo4j_driver.execute_query("MATCH (n:Feat {graph_id: $g}) WHERE EXISTS { (n)<-[:ATTR]-() } "
                                      "RETURN count(n) AS c", g=gid).records[0]["c"]
    assert rows == 6
    assert assert_stored_rows_complete(neo4j_driver, gid) == len(json.loads(g["target"])["targets"]) + 6


def _graphs(driver, acc: dict) -> dict:  # noqa: ANN001
    from tests.pipeline.checks import graphs_per_prompt

    return graphs_per_prompt(driver, acc["corpus_id"])


def _running_worker_pid(driver, corpus_id: str) -> tuple[str, int] | None:  # noqa: ANN001
    recs = driver.execute_query("MATCH (p:Prompt {corpus_id: $c}) WHERE p.state = 'running' "
                                "RETURN p.prompt_id AS p, p.worker AS w", c=corpus_id).records
    return (recs[0]["p"], int(recs[0]["w"].rsplit(":", 1)[1])) if recs else None


def test_sigkilled_worker_prompt_is_redelivered_and_counted_once(client, neo4j_driver, registered, worker_factory):
    model, dset = registered
    worker_factory({"ATLAS_PIPELINE_FAULT_DELAY_S": "2.0"})
    acc = submit(client, model, dset, PROMPTS[:3])
    prompt_id, pid = wait_for(lambda: _running_worker_pid(neo4j_driver, acc["corpus_id"]), 90, "a running prompt")
    os.kill(pid, signal.SIGKILL)  # the pool child, mid-prompt (inside the fault delay)
    st = wait_for(lambda: finished(client, acc), 120, "the corpus to finish after the kill")
    assert st["state"] == "complete" and st["done"] == 3
    attempts = neo4j_driver.execute_query("MATCH (p:Prompt {prompt_id: $p}) RETURN p.attempts AS a",
                                          p=prompt_id).records[0]["a"]
    assert attempts == 2  # started, killed, redelivered and finished
    assert_each_graph_once(neo4j_driver, acc["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, acc["corpus_id"])


def test_cancel_stops_running_work_and_leaves_nothing_half_written(client, neo4j_driver, registered, worker_factory):
    model, dset = registered
    worker_factory({"ATLAS_PIPELINE_FAULT_DELAY_S": "2.0"})
    acc = submit(client, model, dset, PROMPTS)
    wait_for(lambda: _running_worker_pid(neo4j_driver, acc["corpus_id"]), 90, "a running prompt")
    r = client.delete(acc["job_url"])
    assert r.status_code == 202 and r.json()["state"] in ("cancelling", "cancelled")
    st = wait_for(lambda: finished(client, acc), 60, "the job to be cancelled")
    assert st["state"] == "cancelled" and st["done"] + st["cancelled"] == 4 and st["cancelled"] >= 3
    # Only complete graphs exist, none half-written; every Node belongs to a complete graph.
    statuses = [s for ss in _graphs(neo4j_driver, acc).values() for s in ss]
    assert set(statuses) <= {"complete"} and len(statuses) == st["done"]
    orphans = neo4j_driver.execute_query(
        "MATCH (n:Node) WHERE n.graph_id STARTS WITH $g OPTIONAL MATCH (g:Graph {graph_id: n.graph_id}) "
        "WITH n, g WHERE g IS NULL OR g.status <> 'complete' RETURN count(n) AS c", g=f"g-{acc['corpus_id']}").records
    assert orphans[0]["c"] == 0


def test_reaper_requeues_a_prompt_whose_worker_vanished(client, neo4j_driver, redis_client, registered, worker_factory,
                                                        settings):
    from workers.pipeline import jobs
    from workers.pipeline.reaper import reap_once
    from workers.tasks import enqueue_prompt

    model, dset = registered
    acc = submit(client, model, dset, PROMPTS[:1])
    prompt_id = f"{acc['corpus_id']}-0"
    # A worker that took the prompt and vanished: running, no heartbeat. (Its queued message is still in
    # Redis; the live worker below takes it too; both deliveries converge on one graph.)
    decision, _ = jobs.start_prompt(neo4j_driver, prompt_id, "ghost:1", settings.neo4j_database)
    assert decision == "run"
    assert reap_once(neo4j_driver, redis_client, enqueue_prompt, stale_after_s=60.0) == []  # not stale yet
    import time

    time.sleep(1.1)
    assert reap_once(neo4j_driver, redis_client, enqueue_prompt, stale_after_s=1.0) == [prompt_id]
    worker_factory()
    st = wait_for(lambda: finished(client, acc), 90, "the reaped prompt to finish")
    assert st["state"] == "complete"
    reaped = neo4j_driver.execute_query("MATCH (p:Prompt {prompt_id: $p}) RETURN p.reaped AS r", p=prompt_id).records
    assert reaped[0]["r"] == 1
    assert_each_graph_once(neo4j_driver, acc["corpus_id"])
    assert_aggregates_match_stored_edges(neo4j_driver, acc["corpus_id"])
