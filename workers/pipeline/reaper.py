"""The reaper: re-enqueue prompts whose heartbeat went stale (their worker died without Celery noticing,
e.g. the whole worker host or its main process was killed, so the message waits for Redis's visibility
timeout). A still-alive duplicate is harmless: the graph writer and the prompt counter are idempotent.

A prompt that ended without its graph (failed, cancelled) while a dead writer's lease on the graph was still
live could not remove the half-written graph itself: the reaper does, once that lease has run out
(:func:`abandoned_graphs`).

It also re-sends the corpus-done task of a job stuck in ``aggregating`` (every prompt final, its message lost:
Redis down when the last prompt finished, or the task gave up) once no folder holds the corpus's lease:
folds and the job's completion are idempotent."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import redis as redis_lib
from neo4j import Driver

from workers.pipeline import jobs
from workers.store.writer import discard_unfinished

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str, int], None]  # (job_id, prompt_id, round)


def stale_prompts(driver: Driver, r: redis_lib.Redis, stale_after_s: float, database: str | None = None) -> list[tuple[str, str]]:
    """(job_id, prompt_id) of running prompts whose last heartbeat (or start) is older than ``stale_after_s``."""
    recs = driver.execute_query(
        "MATCH (p:Prompt) WHERE p.state = 'running' RETURN p.job_id AS j, p.prompt_id AS p, p.started_at AS t",
        database_=database).records
    now = time.time()
    out = []
    for rec in recs:
        beat = jobs.last_beat(r, rec["j"], rec["p"])
        last = beat.at if beat is not None else float(rec["t"] or 0)
        if now - last > stale_after_s:
            out.append((rec["j"], rec["p"]))
    return out


_STUCK_AGGREGATING = """
MATCH (j:Job) WHERE j.state = 'aggregating' AND j.finished_at < $now - $stale_after_s
OPTIONAL MATCH (f:AggFold {corpus_id: j.corpus_id})
WITH j, f WHERE f IS NULL OR f.writer IS NULL OR f.lease_until < $now
RETURN j.job_id AS job_id
"""


def stuck_aggregations(driver: Driver, stale_after_s: float, database: str | None = None) -> list[str]:
    """Jobs 'aggregating' for longer than ``stale_after_s`` whose corpus no folder is folding."""
    recs = jobs.quiet_records(driver, _STUCK_AGGREGATING, database, write=False, now=time.time(),
                              stale_after_s=stale_after_s)
    return [rec["job_id"] for rec in recs]


def abandoned_graphs(driver: Driver, database: str | None = None) -> list[str]:
    """Unfinished graphs ('writing', lease run out) whose prompt ended without a graph (failed or cancelled)."""
    writing = jobs.quiet_records(
        driver, "MATCH (g:Graph) WHERE g.status = 'writing' AND coalesce(g.lease_until, 0) < $now "
        "RETURN g.graph_id AS g", database, write=False, now=time.time())
    by_prompt = {jobs.prompt_id_of_graph(rec["g"]): rec["g"] for rec in writing}
    by_prompt.pop(None, None)
    if not by_prompt:
        return []
    ended = jobs.quiet_records(
        driver, "MATCH (p:Prompt) WHERE p.prompt_id IN $ids AND p.state IN ['failed', 'cancelled'] "
        "RETURN p.prompt_id AS p", database, write=False, ids=list(by_prompt))
    return [by_prompt[rec["p"]] for rec in ended]


def reap_once(driver: Driver, r: redis_lib.Redis, enqueue: Enqueue, stale_after_s: float,
              database: str | None = None, enqueue_finish: Callable[[str], None] | None = None) -> list[str]:
    """One pass; returns the prompt ids re-enqueued. Stuck aggregations get their corpus-done task again
    (``enqueue_finish``, default ``workers.tasks.enqueue_finish_corpus``); abandoned half-written graphs are
    removed."""
    if enqueue_finish is None:
        from workers.tasks import enqueue_finish_corpus as enqueue_finish
    for graph_id in abandoned_graphs(driver, database):
        if discard_unfinished(driver, graph_id, f"reaper-{uuid.uuid4().hex}", database=database):
            log.warning("removed the half-written graph %s of an ended prompt", graph_id)
    for job_id in stuck_aggregations(driver, stale_after_s, database):
        enqueue_finish(job_id)
        log.warning("re-sent the corpus-done task of job %s (stuck aggregating)", job_id)
    done = []
    for job_id, prompt_id in stale_prompts(driver, r, stale_after_s, database):
        round_ = jobs.requeue_prompt(driver, prompt_id, database)
        if round_ is None:
            continue  # it finished meanwhile
        # The new delivery is the prompt's runner now: without this its first look would find the dead runner's
        # heartbeat (stale for the reaper, maybe not yet for a worker with another stale_after_s) and wait on it.
        jobs.beat(r, job_id, prompt_id, jobs.task_id_for(job_id, prompt_id, round_))
        enqueue(job_id, prompt_id, round_)
        log.warning("re-enqueued stale prompt %s (round %d)", prompt_id, round_)
        done.append(prompt_id)
    return done


def run_reaper(driver: Driver, r: redis_lib.Redis, enqueue: Enqueue, stale_after_s: float, interval_s: float,
               database: str | None = None, stop: Callable[[], bool] = lambda: False) -> None:
    while not stop():
        try:
            reap_once(driver, r, enqueue, stale_after_s, database)
        except Exception as exc:  # noqa: BLE001 - a reaper outlives database restarts; it logs and retries
            log.error("reaper pass failed (will retry): %s", exc)
        time.sleep(interval_s)
