"""Jobs: one per corpus. State and counters live in Neo4j, the cancellation flag and heartbeats in Redis.

Nodes: ``(:Corpus {corpus_id, model_id, dictionary_set_id, settings, owner_key_id})``, ``(:Job {job_id, corpus_id, state,
total, done, failed, cancelled, ...})``, ``(:Prompt {prompt_id, corpus_id, job_id, index, text, tokens,
targets, state, attempts, retries, error})`` (``retries``: Celery retries after transient errors); the prompt's graph is ``(:Graph {graph_id: graph_id_for(prompt_id)})``.

Prompt states: queued -> running -> done | failed | cancelled. Every move into a final state happens in
one transaction together with the job counter, guarded by the prompt's current state (taken under its
write lock), so a duplicated or retried task counts once; the transaction that makes
done + failed + cancelled reach total also sets the job's final state: the database counter is the
"corpus done" trigger (no chord).

Job states: submitting -> queued -> running -> complete | complete_with_failures; cancelling -> cancelled.
When the counter completes while graphs of the corpus still wait for their aggregates to be folded
(``Graph.agg_state`` pending or folding), the job waits in ``aggregating`` until the corpus-done task
(cpu queue, ``workers.tasks.finish_corpus``) has folded them and calls :func:`complete_aggregation`: a final
job state therefore means the corpus aggregates are exact (workers/store/aggregates.py).

Queries run with Neo4j's UNRECOGNIZED notifications off (:func:`quiet_records`): they read properties that exist
only once some prompt or graph reached a state (``p.error``, ``g.agg_state`` ...), and on a fresh database the
server answers each such query with a "property does not exist" warning, logged on every poll of a job.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis as redis_lib
from neo4j import Driver, ManagedTransaction, Record

from workers.pipeline.validation import ValidatedCorpus

FINAL_JOB_STATES = ("complete", "complete_with_failures", "cancelled")
AGGREGATING = "aggregating"  # every prompt final, aggregates not yet folded
FINAL_PROMPT_STATES = ("done", "failed", "cancelled")


def quiet_records(driver: Driver, query: str, database: str | None, *, write: bool = True, **params: Any) -> list[Record]:
    """Run one query in a managed transaction (retried on transient errors) with UNRECOGNIZED notifications
    disabled (module docstring)."""
    with driver.session(database=database, notifications_disabled_classifications=["UNRECOGNIZED"]) as session:
        work = session.execute_write if write else session.execute_read
        return work(lambda tx: list(tx.run(query, params)))


def cancel_key(job_id: str) -> str:
    return f"atlas:job:{job_id}:cancel"


def heartbeat_key(job_id: str) -> str:
    return f"atlas:job:{job_id}:heartbeat"  # hash prompt_id -> "<unix time of the last beat> <runner token>"


class Beat(NamedTuple):
    at: float  # unix time of the last beat (or, for a retry waiting its turn, of the promised start)
    runner: str  # the writer token (Celery task id) of the delivery running the prompt; "" if unknown


def beat(r: redis_lib.Redis, job_id: str, prompt_id: str, runner: str, at: float | None = None) -> None:
    """Record that ``runner`` is alive on ``prompt_id`` at ``at`` (default now). A task about to retry sets it
    to the time of its retry, so that the reaper does not re-enqueue a prompt whose own retry is queued."""
    r.hset(heartbeat_key(job_id), prompt_id, f"{time.time() if at is None else at!r} {runner}")


def clear_beat(r: redis_lib.Redis, job_id: str, prompt_id: str) -> None:
    r.hdel(heartbeat_key(job_id), prompt_id)


def last_beat(r: redis_lib.Redis, job_id: str, prompt_id: str) -> Beat | None:
    raw = r.hget(heartbeat_key(job_id), prompt_id)
    if raw is None:
        return None
    at, _, runner = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
    return Beat(float(at), runner)


def ids_for_new_job() -> tuple[str, str]:
    """(job_id, corpus_id): one job per corpus, sharing the random part."""
    hexpart = uuid.uuid4().hex[:16]
    return f"j{hexpart}", f"c{hexpart}"


def prompt_id_for(corpus_id: str, index: int) -> str:
    return f"{corpus_id}-{index}"


def job_id_of(prompt_id: str) -> str:
    """Inverse of the two functions above: the job of a prompt id."""
    return "j" + prompt_id.split("-", 1)[0][1:]


def graph_id_for(prompt_id: str) -> str:
    return f"g-{prompt_id}"


def prompt_id_of_graph(graph_id: str) -> str | None:
    """Inverse of :func:`graph_id_for` (None for a graph not made by the pipeline)."""
    prompt_id = graph_id[2:]
    return prompt_id if graph_id_for(prompt_id) == graph_id else None


def task_id_for(job_id: str, prompt_id: str, attempt: int = 0) -> str:
    """Celery task id derived from (job, prompt); the reaper's re-enqueues add their round."""
    return f"{job_id}/{prompt_id}" + (f"/r{attempt}" if attempt else "")


@dataclass(frozen=True)
class CreatedJob:
    job_id: str
    corpus_id: str
    prompt_ids: list[str]


def create_job(driver: Driver, corpus: ValidatedCorpus, database: str | None = None, *,
               owner_key_id: str | None = None) -> CreatedJob:
    """One transaction: Corpus, Job (state 'submitting') and all Prompts. Nothing exists if it fails.

    ``owner_key_id`` is the API key that submitted the corpus (stored as ``Corpus.owner_key_id``; only that
    key or an admin key may change it). None = submitted outside the API: only admin keys may change it."""
    job_id, corpus_id = ids_for_new_job()
    prompt_ids = [prompt_id_for(corpus_id, i) for i in range(len(corpus.prompts))]
    now = time.time()

    def work(tx: ManagedTransaction) -> None:
        tx.run(
            """
            CREATE (c:Corpus {corpus_id: $corpus_id, name: $name, model_id: $model_id,
                              dictionary_set_id: $dset, settings: $settings, n_prompts: $n, created_at: $now,
                              duplicates: $duplicates, owner_key_id: $owner})
            CREATE (j:Job {job_id: $job_id, corpus_id: $corpus_id, state: 'submitting', total: $n, done: 0,
                           failed: 0, cancelled: 0, created_at: $now})
            CREATE (j)-[:RUNS]->(c)
            WITH c
            UNWIND range(0, $n - 1) AS i
            CREATE (p:Prompt {prompt_id: $pids[i], corpus_id: $corpus_id, job_id: $job_id, index: i,
                              text: $texts[i], tokens: $tokens[i], targets: $targets[i], state: 'queued',
                              attempts: 0, retries: 0, reaped: 0})
            CREATE (p)-[:IN]->(c)
            """,
            corpus_id=corpus_id, job_id=job_id, name=corpus.name, model_id=corpus.model_id,
            dset=corpus.dictionary_set_id, settings=json.dumps(corpus.settings, sort_keys=True),
            n=len(prompt_ids), now=now, duplicates=json.dumps(corpus.duplicates), pids=prompt_ids,
            texts=[p.text for p in corpus.prompts], tokens=corpus.tokens,
            targets=[json.dumps(p.targets) for p in corpus.prompts], owner=owner_key_id,
        ).consume()

    with driver.session(database=database) as s:
        s.execute_write(work)
    return CreatedJob(job_id, corpus_id, prompt_ids)


def set_job_state(driver: Driver, job_id: str, state: str, only_from: tuple[str, ...], database: str | None = None) -> bool:
    recs = quiet_records(
        driver, "MATCH (j:Job {job_id: $id}) SET j._lock = true WITH j WHERE j.state IN $from "
        "SET j.state = $state REMOVE j._lock RETURN count(j) AS c",
        database, id=job_id, state=state, **{"from": list(only_from)})
    return recs[0]["c"] == 1


def delete_job(driver: Driver, job_id: str, database: str | None = None) -> None:
    """Remove a job that never got queued (its enqueue failed): Job, Corpus and Prompts."""
    quiet_records(driver, "MATCH (j:Job {job_id: $id})-[:RUNS]->(c:Corpus) OPTIONAL MATCH (p:Prompt)-[:IN]->(c) "
             "DETACH DELETE p, c, j", database, id=job_id)


@dataclass(frozen=True)
class PromptWork:
    """What a worker needs to compute one prompt."""

    prompt_id: str
    job_id: str
    corpus_id: str
    text: str
    tokens: list[int]
    targets: list[str]
    model_id: str
    dictionary_set_id: str
    settings: dict[str, Any]
    attempts: int


_START = """
MATCH (p:Prompt {prompt_id: $pid})-[:IN]->(c:Corpus)<-[:RUNS]-(j:Job)
SET p._lock = true
WITH p, c, j,
     CASE WHEN p.state IN ['done', 'failed', 'cancelled'] THEN p.state
          WHEN j.state IN ['cancelling', 'cancelled'] THEN 'cancel'
          WHEN $count_attempt AND p.attempts >= $max_attempts THEN 'exhausted'
          ELSE 'run' END AS decision
SET p.state = CASE WHEN decision = 'run' THEN 'running' ELSE p.state END,
    p.attempts = CASE WHEN decision = 'run' AND $count_attempt THEN p.attempts + 1 ELSE p.attempts END,
    p.retries = CASE WHEN decision = 'run' AND NOT $count_attempt THEN coalesce(p.retries, 0) + 1
                     ELSE p.retries END,
    p.started_at = CASE WHEN decision = 'run' THEN $now ELSE p.started_at END,
    p.worker = CASE WHEN decision = 'run' THEN $worker ELSE p.worker END,
    j.state = CASE WHEN decision = 'run' AND j.state IN ['queued', 'submitting'] THEN 'running' ELSE j.state END,
    j.started_at = coalesce(j.started_at, CASE WHEN decision = 'run' THEN $now END)
REMOVE p._lock
RETURN decision, p.text AS text, p.tokens AS tokens, p.targets AS targets, p.attempts AS attempts,
       c.corpus_id AS corpus_id, c.model_id AS model_id, c.dictionary_set_id AS dset, c.settings AS settings,
       j.job_id AS job_id
"""


def start_prompt(driver: Driver, prompt_id: str, worker: str, database: str | None = None,
                 max_attempts: int = 3, *, count_attempt: bool = True) -> tuple[str, PromptWork | None]:
    """Move a prompt to 'running'. Returns (decision, work): 'run' with the work, 'cancel' (the job is being
    cancelled), 'exhausted' (it was started ``max_attempts`` times already: each attempt died, e.g. killed
    by the hard time limit or out of memory), or the prompt's final state when it is already finished
    (a duplicate delivery).

    ``count_attempt=False`` for a Celery retry of a delivery that already counted its attempt: an attempt is a
    delivery that may die, and a retry after a transient error (a database restart, waiting out a dead writer's
    lease) is the same delivery going on, not a new death; it is counted in the prompt's ``retries``."""
    recs = quiet_records(driver, _START, database, pid=prompt_id, now=time.time(), worker=worker,
                         max_attempts=max_attempts, count_attempt=count_attempt)
    if not recs:
        raise LookupError(f"prompt {prompt_id} does not exist (its job was deleted?)")
    r = recs[0]
    if r["decision"] != "run":
        return r["decision"], None
    return "run", PromptWork(prompt_id, r["job_id"], r["corpus_id"], r["text"], list(r["tokens"]),
                             json.loads(r["targets"]), r["model_id"], r["dset"], json.loads(r["settings"]),
                             r["attempts"])


_FINAL_STATE = """CASE WHEN j.cancelled > 0 THEN 'cancelled' WHEN j.failed > 0 THEN 'complete_with_failures'
                   ELSE 'complete' END"""

_FINISH = """
MATCH (p:Prompt {prompt_id: $pid})-[:IN]->(:Corpus)<-[:RUNS]-(j:Job)
SET j._lock = true, p._lock = true
WITH p, j, NOT p.state IN ['done', 'failed', 'cancelled'] AS counts
SET p.state = CASE WHEN counts THEN $outcome ELSE p.state END,
    p.error = CASE WHEN counts THEN $error ELSE p.error END,
    p.finished_at = CASE WHEN counts THEN $now ELSE p.finished_at END,
    p.seconds = CASE WHEN counts THEN $seconds ELSE p.seconds END,
    j.done = j.done + CASE WHEN counts AND $outcome = 'done' THEN 1 ELSE 0 END,
    j.failed = j.failed + CASE WHEN counts AND $outcome = 'failed' THEN 1 ELSE 0 END,
    j.cancelled = j.cancelled + CASE WHEN counts AND $outcome = 'cancelled' THEN 1 ELSE 0 END
WITH p, j, counts, j.done + j.failed + j.cancelled = j.total AND NOT j.state IN $final AS finished
CALL (j) {
  MATCH (g:Graph {corpus_id: j.corpus_id}) WHERE g.agg_state IN ['pending', 'folding']
  RETURN count(g) AS unfolded
}
SET j.state = CASE WHEN NOT finished THEN j.state
                   WHEN unfolded > 0 THEN 'aggregating'
                   ELSE """ + _FINAL_STATE + """ END,
    j.finished_at = CASE WHEN finished THEN $now ELSE j.finished_at END
REMOVE j._lock, p._lock
RETURN counts, finished, j.state AS job_state, j.done AS done
"""

_COMPLETE_AGGREGATION = """
MATCH (j:Job {job_id: $id})
SET j._lock = true
WITH j
CALL (j) {
  MATCH (g:Graph {corpus_id: j.corpus_id}) WHERE g.agg_state IN ['pending', 'folding']
  RETURN count(g) AS unfolded
}
WITH j, unfolded, j.state = 'aggregating' AND unfolded = 0 AS completes
SET j.state = CASE WHEN completes THEN """ + _FINAL_STATE + """ ELSE j.state END,
    j.aggregated_at = CASE WHEN completes THEN $now ELSE j.aggregated_at END
REMOVE j._lock
RETURN j.state AS state, unfolded
"""


class PromptFinish(NamedTuple):
    counted: bool  # this call moved the prompt into its final state (False: a duplicate)
    job_finished: bool  # ... and that completed the job's counter (send the corpus-done task)
    done: int  # the job's done counter afterwards


def finish_prompt(driver: Driver, prompt_id: str, outcome: str, error: str | None = None, seconds: float | None = None,
                  database: str | None = None) -> PromptFinish:
    """Record a prompt's final state once. Returns (counted now, job counter completed by this call, done)."""
    if outcome not in FINAL_PROMPT_STATES:
        raise ValueError(f"outcome {outcome!r} is not one of {FINAL_PROMPT_STATES}")
    recs = quiet_records(driver, _FINISH, database, pid=prompt_id, outcome=outcome, error=error, now=time.time(),
                    seconds=seconds, final=[*FINAL_JOB_STATES, AGGREGATING])
    if not recs:
        raise LookupError(f"prompt {prompt_id} does not exist")
    return PromptFinish(recs[0]["counts"], recs[0]["finished"], recs[0]["done"])


def complete_aggregation(driver: Driver, job_id: str, database: str | None = None) -> str:
    """An ``aggregating`` job whose corpus has no unfolded graph left moves to its final state. Returns the
    job's state afterwards (still ``aggregating`` if some graph is unfolded; any other state is left as is)."""
    recs = quiet_records(driver, _COMPLETE_AGGREGATION, database, id=job_id, now=time.time())
    if not recs:
        raise LookupError(job_id)
    return recs[0]["state"]


def requeue_prompt(driver: Driver, prompt_id: str, database: str | None = None) -> int | None:
    """Reaper: a 'running' prompt back to 'queued'; returns its new reap round (None if not running)."""
    recs = quiet_records(
        driver, "MATCH (p:Prompt {prompt_id: $pid}) SET p._lock = true WITH p WHERE p.state = 'running' "
        "SET p.state = 'queued', p.reaped = p.reaped + 1 REMOVE p._lock RETURN p.reaped AS r", database, pid=prompt_id)
    return recs[0]["r"] if recs else None


def is_cancelled(r: redis_lib.Redis, job_id: str) -> bool:
    return bool(r.exists(cancel_key(job_id)))


def cancel_job(driver: Driver, r: redis_lib.Redis, job_id: str, database: str | None = None) -> str:
    """Cancel: flag in Redis (workers check it between stages), job 'cancelling', and every still-queued
    prompt counted cancelled at once (their tasks, when delivered, find them final and do nothing).
    Returns the job's state afterwards; a finished job is left as it is."""
    recs = quiet_records(driver, "MATCH (j:Job {job_id: $id}) RETURN j.state AS s", database, write=False, id=job_id)
    if not recs:
        raise LookupError(job_id)
    if recs[0]["s"] in (*FINAL_JOB_STATES, AGGREGATING):  # every prompt is final already
        return recs[0]["s"]
    r.set(cancel_key(job_id), "1", ex=30 * 24 * 3600)
    set_job_state(driver, job_id, "cancelling", ("submitting", "queued", "running"), database)
    queued = quiet_records(driver, "MATCH (p:Prompt {job_id: $id}) WHERE p.state = 'queued' RETURN p.prompt_id AS p",
                      database, write=False, id=job_id)
    for rec in queued:
        _finish_if_state(driver, rec["p"], "queued", database)
    # A job whose prompts were all final already (nothing running) ends here.
    return job_status(driver, job_id, database)["state"]


def _finish_if_state(driver: Driver, prompt_id: str, state: str, database: str | None) -> None:
    # Cancel only prompts still queued (a worker may have started one since the listing).
    recs = quiet_records(
        driver, "MATCH (p:Prompt {prompt_id: $pid}) SET p._lock = true WITH p WHERE p.state = $state "
        "SET p.state = 'cancelling' REMOVE p._lock RETURN count(p) AS c", database, pid=prompt_id, state=state)
    if recs[0]["c"]:
        finish_prompt(driver, prompt_id, "cancelled", "cancelled before it started", database=database)


def job_status(driver: Driver, job_id: str, database: str | None = None, max_failures: int = 100) -> dict[str, Any]:
    """State, counters, throughput (prompts/min since the first prompt started), ETA and failures."""
    recs = quiet_records(
        driver, "MATCH (j:Job {job_id: $id})-[:RUNS]->(c:Corpus) "
        "OPTIONAL MATCH (p:Prompt {job_id: $id}) WHERE p.state = 'failed' "
        "WITH j, c, p ORDER BY p.index "
        "RETURN j {.*} AS j, c {.*} AS c, collect(p {.prompt_id, .index, .error, .attempts})[..$k] AS failures",
        database, write=False, id=job_id, k=max_failures)
    if not recs:
        raise LookupError(job_id)
    j, c = recs[0]["j"], recs[0]["c"]
    running = quiet_records(driver, "MATCH (p:Prompt {job_id: $id}) WHERE p.state = 'running' RETURN count(p) AS n",
                       database, write=False, id=job_id)[0]["n"]
    end = j.get("finished_at") or time.time()
    started = j.get("started_at")
    finished_n = j["done"] + j["failed"]
    per_min = finished_n / ((end - started) / 60) if started and end > started and finished_n else None
    remaining = j["total"] - finished_n - j["cancelled"]
    eta = remaining / per_min * 60 if per_min and j["state"] not in FINAL_JOB_STATES else None
    return {
        "job_id": job_id, "corpus_id": c["corpus_id"], "state": j["state"], "total": j["total"],
        "done": j["done"], "failed": j["failed"], "cancelled": j["cancelled"], "running": running,
        "queued": max(0, remaining - running), "throughput_per_min": per_min,
        "eta_s": None if eta is None else max(0.0, eta),
        "created_at": j["created_at"], "started_at": started, "finished_at": j.get("finished_at"),
        "model": c["model_id"], "dictionary_set": c["dictionary_set_id"], "settings": json.loads(c["settings"]),
        "duplicates": json.loads(c.get("duplicates") or "[]"),
        "failures": [f for f in recs[0]["failures"] if f.get("prompt_id")],
    }
