"""Job bookkeeping in the real Neo4j/Redis without workers: final states counted once, the job finishing
exactly when its counter reaches the total, prompts that keep dying failed after max_attempts."""

from __future__ import annotations

import redis

from workers.pipeline import jobs
from workers.pipeline.compute import ModelCache, run_prompt
from workers.pipeline.config import PipelineSettings


def _submit(client, model: str, dset: str, prompts: list) -> dict:  # noqa: ANN001
    r = client.post("/corpora", json={"model": model, "dictionary_set": dset, "prompts": prompts})
    assert r.status_code == 202, r.text
    return r.json()


def test_outcomes_count_once_and_the_last_one_finishes_the_job(client, neo4j_driver, registered):
    model, dset = registered
    acc = _submit(client, model, dset, ["the cat sat", "the dog ran", "a b c"])
    pids = [f"{acc['corpus_id']}-{i}" for i in range(3)]
    assert jobs.finish_prompt(neo4j_driver, pids[0], "done") == (True, False)
    assert jobs.finish_prompt(neo4j_driver, pids[0], "done") == (False, False)  # duplicate: not counted
    assert jobs.finish_prompt(neo4j_driver, pids[0], "failed") == (False, False)  # a final state is final
    assert jobs.finish_prompt(neo4j_driver, pids[1], "failed", "boom") == (True, False)
    assert jobs.finish_prompt(neo4j_driver, pids[2], "done") == (True, True)
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
    r = redis.Redis.from_url(settings.redis_url)
    assert run_prompt(neo4j_driver, r, ModelCache(), cfg, pid) == "failed"
    st = client.get(acc["job_url"]).json()
    assert st["state"] == "complete_with_failures" and "started 2 times" in st["failures"][0]["error"]
