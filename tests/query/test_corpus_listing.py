"""GET /corpora, /corpora/{id} and /jobs over the real Neo4j: corpora and jobs made by the pipeline's own
functions (create_job, start_prompt, finish_prompt), graphs written by the real writer.

The database is shared with other tests, so orderings are checked over the whole listing (walked page by
page) and counts on this test's own corpora."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.checks import played_job
from tests.query.graphs import make_records
from workers.store.records import NodeRow


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def three_jobs(neo4j_driver, settings, unique_id) -> Iterator[list]:  # noqa: ANN001
    """Three jobs: one queued (nothing run), one running (1 done, 1 failed of 3), one complete (2 of 2)."""
    from workers.pipeline import jobs
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus

    db = settings.neo4j_database
    made = []
    for k, (n, outcomes) in enumerate(((2, ()), (3, ("done", "failed")), (2, ("done", "done")))):
        corpus = ValidatedCorpus(f"{unique_id}-m", f"{unique_id}-d", f"{unique_id} corpus {k}", {},
                                 [PromptSpec(f"prompt {k}.{i}") for i in range(n)], [[1, 2]] * n, [])
        made.append(played_job(neo4j_driver, corpus, outcomes, worker="listing-test", database=db))
    yield made
    for created in made:
        jobs.delete_job(neo4j_driver, created.job_id, db)


def walk(client, path: str, **params) -> list[dict]:  # noqa: ANN001
    items, offset = [], 0
    while offset is not None:
        r = client.get(path, params={**params, "offset": offset, "limit": 7})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["offset"] == offset and len(body["items"]) <= 7
        items += body["items"]
        offset = body["next_offset"]
    return items


def test_corpora_newest_first_with_their_jobs(client, three_jobs, store, unique_id) -> None:  # noqa: ANN001
    a, b, c = three_jobs
    # A corpus written outside the pipeline (the writer MERGEs a bare Corpus): listed, with no job.
    rec = make_records([([NodeRow("feat:L0.mlp:p0:f1", "feature", 0, 0, feature=1, dictionary="L0.mlp",
                                  activation=1.0)], [], [])], corpus_id=f"{unique_id}-bare")
    store(rec)
    everything = walk(client, "/corpora")
    ids = [x["corpus_id"] for x in everything]
    assert len(ids) == len(set(ids)), "a corpus is listed twice across pages"
    stamps = [x["created_at"] if x["created_at"] is not None else float("-inf") for x in everything]
    assert stamps == sorted(stamps, reverse=True), "newest first, corpora without a date last"
    mine = [x for x in everything if x["corpus_id"] in {a.corpus_id, b.corpus_id, c.corpus_id}]
    assert [x["corpus_id"] for x in mine] == [c.corpus_id, b.corpus_id, a.corpus_id]
    by_id = {x["corpus_id"]: x for x in mine}
    assert by_id[a.corpus_id]["job"]["state"] == "queued"
    assert (by_id[b.corpus_id]["job"]["state"], by_id[b.corpus_id]["job"]["done"], by_id[b.corpus_id]["job"]["failed"],
            by_id[b.corpus_id]["job"]["total"]) == ("running", 1, 1, 3)
    assert (by_id[c.corpus_id]["job"]["state"], by_id[c.corpus_id]["job"]["done"]) == ("complete", 2)
    assert by_id[b.corpus_id]["name"] == f"{unique_id} corpus 1"
    assert by_id[b.corpus_id]["model"] == f"{unique_id}-m" and by_id[b.corpus_id]["dictionary_set"] == f"{unique_id}-d"
    assert by_id[b.corpus_id]["n_prompts"] == 3 and by_id[b.corpus_id]["n_graphs"] == 0
    bare = next(x for x in everything if x["corpus_id"] == f"{unique_id}-bare")
    assert bare["job"] is None and bare["n_graphs"] == 1 and bare["model"] is None

    one = client.get(f"/corpora/{b.corpus_id}")
    assert one.status_code == 200 and one.json() == by_id[b.corpus_id]
    missing = client.get("/corpora/no-such-corpus")
    assert missing.status_code == 404 and "no-such-corpus" in missing.json()["detail"]
    for params, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"offset": -1}, "offset")):
        r = client.get("/corpora", params=params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", field]


def test_jobs_filtered_by_state_and_corpus(client, three_jobs, unique_id) -> None:  # noqa: ANN001
    a, b, c = three_jobs
    everything = walk(client, "/jobs")
    stamps = [x["created_at"] for x in everything]
    assert stamps == sorted(stamps, reverse=True)
    mine = [x["job_id"] for x in everything if x["job_id"] in {a.job_id, b.job_id, c.job_id}]
    assert mine == [c.job_id, b.job_id, a.job_id]
    for state, expect in (("queued", a), ("running", b), ("complete", c)):
        listed = walk(client, "/jobs", state=state)
        assert all(x["state"] == state for x in listed)
        assert [x["job_id"] for x in listed if x["job_id"] in {a.job_id, b.job_id, c.job_id}] == [expect.job_id]
    only_b = client.get("/jobs", params={"corpus_id": b.corpus_id}).json()["items"]
    assert [(x["job_id"], x["done"], x["failed"], x["total"], x["corpus_name"]) for x in only_b] == [
        (b.job_id, 1, 1, 3, f"{unique_id} corpus 1")]
    # The list agrees with the job's own page.
    status = client.get(f"/jobs/{b.job_id}").json()
    assert {k: only_b[0][k] for k in ("state", "done", "failed", "cancelled", "total")} == {
        k: status[k] for k in ("state", "done", "failed", "cancelled", "total")}
    bad = client.get("/jobs", params={"state": "finished"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "state"]
    assert client.get("/jobs", params={"state": "cancelled", "corpus_id": a.corpus_id}).json()["items"] == []
