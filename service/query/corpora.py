"""Corpora and jobs as lists: what has been submitted, with its job's progress.

A ``(:Corpus)`` is created with its ``(:Job)`` by ``POST /corpora`` (workers/pipeline/jobs.py); the graph writer
also MERGEs bare ``(:Corpus {corpus_id})`` nodes for graphs written outside the pipeline (local circuits'
``local:<corpus>``, tests, benchmarks). Those are listed too, with no job, name or model: the list shows what
the database holds. Reading is public, like every other read of the API (only writes and /cypher need keys);
the owner's key id is not shown.

Order: newest first (``created_at`` desc; corpora without one last), then by id, so pages are stable.
"""

from __future__ import annotations

import time

from neo4j import Driver

from workers.errors import NotFound
from workers.vocabulary.defaults import JOB_STATES

# One row per corpus: its job (at most one per corpus) and how many complete graphs it has (graph_corpus_id index).
_CORPUS_FIELDS = """
OPTIONAL MATCH (j:Job)-[:RUNS]->(c)
RETURN c.corpus_id AS corpus_id, c.name AS name, c.model_id AS model, c.dictionary_set_id AS dictionary_set,
       c.n_prompts AS n_prompts, c.created_at AS created_at,
       COUNT { MATCH (g:Graph {corpus_id: c.corpus_id}) WHERE g.status = 'complete' } AS n_graphs,
       j {.job_id, .state, .total, .done, .failed, .cancelled, .created_at, .started_at, .finished_at} AS job
"""

_LIST_CORPORA = """
MATCH (c:Corpus)
WITH c ORDER BY coalesce(c.created_at, -1.0) DESC, c.corpus_id ASC SKIP $offset LIMIT $limit
""" + _CORPUS_FIELDS

_GET_CORPUS = "MATCH (c:Corpus {corpus_id: $corpus_id})" + _CORPUS_FIELDS

_LIST_JOBS = """
MATCH (j:Job)
WHERE ($state IS NULL OR j.state = $state) AND ($corpus_id IS NULL OR j.corpus_id = $corpus_id)
WITH j ORDER BY j.created_at DESC, j.job_id ASC SKIP $offset LIMIT $limit
OPTIONAL MATCH (j)-[:RUNS]->(c:Corpus)
RETURN j.job_id AS job_id, j.corpus_id AS corpus_id, j.state AS state, j.total AS total, j.done AS done,
       j.failed AS failed, j.cancelled AS cancelled, j.created_at AS created_at, j.started_at AS started_at,
       j.finished_at AS finished_at, c.name AS corpus_name, c.model_id AS model,
       c.dictionary_set_id AS dictionary_set
"""


class CorpusNotFound(NotFound):
    """No (:Corpus) with this id."""


def list_corpora(driver: Driver, offset: int, limit: int, *, database: str | None = None) -> list[dict]:
    """Corpora, newest first, each with its job's state and counters (``job`` is None without a job)."""
    records, _, _ = driver.execute_query(_LIST_CORPORA, offset=int(offset), limit=int(limit), database_=database,
                                         routing_="r")
    return [dict(r) for r in records]


def get_corpus(driver: Driver, corpus_id: str, *, database: str | None = None) -> dict:
    records, _, _ = driver.execute_query(_GET_CORPUS, corpus_id=corpus_id, database_=database, routing_="r")
    if not records:
        raise CorpusNotFound(f"no corpus {corpus_id!r}")
    return dict(records[0])


def list_jobs(driver: Driver, offset: int, limit: int, *, state: str | None = None, corpus_id: str | None = None,
              database: str | None = None) -> list[dict]:
    """Jobs, newest first, optionally in one state and/or of one corpus. ``state`` must be one of JOB_STATES."""
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"unknown job state {state!r}; choose from {', '.join(JOB_STATES)}")
    records, _, _ = driver.execute_query(_LIST_JOBS, offset=int(offset), limit=int(limit), state=state,
                                         corpus_id=corpus_id, database_=database, routing_="r")
    return [dict(r) for r in records]


# Every finished prompt of a job (done or failed), with when it finished: the job page's plot.
_TIMELINE = """
MATCH (j:Job {job_id: $job_id})
OPTIONAL MATCH (p:Prompt {job_id: $job_id}) WHERE p.state IN ['done', 'failed'] AND p.finished_at IS NOT NULL
RETURN j.started_at AS started, j.finished_at AS finished, collect([p.finished_at, p.state]) AS events
"""


def job_timeline(driver: Driver, job_id: str, bins: int = 30, *, now: float | None = None,
                 database: str | None = None) -> dict:
    """Prompts finished per minute and failures over time: ``bins`` equal intervals from the job's start (its first
    prompt started) to its end (or now, while it runs), each with its done and failed counts and
    ``per_min = (done + failed) / minutes``. Raises LookupError for an unknown job."""
    records, _, _ = driver.execute_query(_TIMELINE, job_id=job_id, database_=database, routing_="r")
    if not records:
        raise LookupError(f"no job {job_id!r}")
    r = records[0]
    # collect() keeps the [null, null] pair of a job with no finished prompt yet (OPTIONAL MATCH found none)
    events = sorted((float(t), state) for t, state in r["events"] if t is not None)
    start = r["started"] if r["started"] is not None else (events[0][0] if events else None)
    if start is None:
        return {"job_id": job_id, "start": None, "end": None, "bin_s": None, "bins": []}
    end = r["finished"] if r["finished"] is not None else (time.time() if now is None else now)
    end = max(end, events[-1][0] if events else end, start)
    width = (end - start) / bins if end > start else 1.0
    out = [{"t0": start + i * width, "done": 0, "failed": 0} for i in range(bins)]
    for t, state in events:
        out[min(bins - 1, max(0, int((t - start) / width)))][state] += 1
    for b in out:
        b["per_min"] = (b["done"] + b["failed"]) / (width / 60.0)
    return {"job_id": job_id, "start": start, "end": end, "bin_s": width, "bins": out}
