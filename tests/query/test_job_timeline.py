"""GET /jobs/{id}/timeline: prompts finished per minute and failures over a job's run, binned, against counts
made by hand from the prompts' finish times (a job played through the pipeline's own state functions, its
times then set to known values)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.checks import played_job


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def timed_job(neo4j_driver, settings) -> Iterator[object]:  # noqa: ANN001
    """A finished job of 6 prompts (4 done, 2 failed) that ran from t=1000 to t=1120, finishing at known times."""
    from workers.pipeline import jobs
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus

    db = settings.neo4j_database
    corpus = ValidatedCorpus("tl-model", "tl-dset", "timeline", {}, [PromptSpec(f"p {i}") for i in range(6)],
                             [[1, 2]] * 6, [])
    outcomes = ("done", "done", "failed", "done", "failed", "done")
    created = played_job(neo4j_driver, corpus, outcomes, worker="tl", database=db)
    times = [1000.0, 1010.0, 1050.0, 1061.0, 1119.0, 1120.0]
    neo4j_driver.execute_query(
        "UNWIND range(0, size($pids) - 1) AS i MATCH (p:Prompt {prompt_id: $pids[i]}) SET p.finished_at = $times[i] "
        "WITH count(*) AS n MATCH (j:Job {job_id: $job}) SET j.started_at = 1000.0, j.finished_at = 1120.0",
        pids=created.prompt_ids, times=times, job=created.job_id, database_=db)
    yield created, times, outcomes
    jobs.delete_job(neo4j_driver, created.job_id, db)


def test_timeline_bins_the_finished_prompts(client, timed_job) -> None:  # noqa: ANN001
    created, times, outcomes = timed_job
    tl = client.get(f"/jobs/{created.job_id}/timeline", params={"bins": 4}).json()
    assert (tl["start"], tl["end"], tl["bin_s"]) == (1000.0, 1120.0, 30.0)
    expected = [{"t0": 1000.0 + 30 * i, "done": 0, "failed": 0} for i in range(4)]
    for t, o in zip(times, outcomes, strict=True):
        expected[min(3, int((t - 1000) // 30))][o] += 1
    for b in expected:
        b["per_min"] = (b["done"] + b["failed"]) * 2.0  # 30-second bins
    assert tl["bins"] == expected
    assert sum(b["done"] for b in tl["bins"]) == 4 and sum(b["failed"] for b in tl["bins"]) == 2
    assert [b["failed"] for b in expected] == [0, 1, 0, 1]
    assert client.get("/jobs/j-nope/timeline").status_code == 404
    assert client.get(f"/jobs/{created.job_id}/timeline", params={"bins": 0}).status_code == 422


def test_timeline_of_a_started_job_with_no_finished_prompt(client, neo4j_driver, settings) -> None:  # noqa: ANN001
    """A running job none of whose prompts has finished has empty bins (its timeline was a 500: schemathesis)."""
    from workers.pipeline import jobs
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus

    db = settings.neo4j_database
    corpus = ValidatedCorpus("tl-model", "tl-dset", "timeline-none", {}, [PromptSpec("p 0")], [[1, 2]], [])
    created = played_job(neo4j_driver, corpus, ("done",), worker="tl", database=db)
    try:
        neo4j_driver.execute_query(
            "MATCH (p:Prompt {job_id: $job}) REMOVE p.finished_at WITH count(*) AS n "
            "MATCH (j:Job {job_id: $job}) SET j.started_at = 1000.0, j.finished_at = 1060.0",
            job=created.job_id, database_=db)
        r = client.get(f"/jobs/{created.job_id}/timeline", params={"bins": 3})
        assert r.status_code == 200, r.text
        tl = r.json()
        assert (tl["start"], tl["end"], tl["bin_s"]) == (1000.0, 1060.0, 20.0)
        assert [(b["done"], b["failed"], b["per_min"]) for b in tl["bins"]] == [(0, 0, 0.0)] * 3
    finally:
        jobs.delete_job(neo4j_driver, created.job_id, db)
