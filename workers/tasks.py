"""Celery tasks. Small, idempotent, taking ids and plain values; the work lives in library code.

``atlas.ping`` proves the whole path (client -> Redis -> worker pool process -> result backend) and
reports which worker process ran it and which per-process resources that process has loaded.

``atlas.compute_prompt(prompt_id)`` (gpu queue) computes and stores one prompt's graph
(``workers.pipeline.compute.run_prompt``); its task id is derived from (job, prompt). Transient Neo4j /
Redis errors are retried with exponential backoff; soft/hard time limits come from the settings.
``atlas.finish_corpus(job_id)`` (cpu queue) is sent by whichever prompt completed the job's counter: it folds
the corpus's remaining graphs into its aggregates, summarises the corpus and moves the job from
``aggregating`` to its final state. ``atlas.fold_aggregates(corpus_id)`` (cpu queue) is an incremental fold,
sent every ``ATLAS_PIPELINE_FOLD_EVERY`` stored graphs. Both use their task id as the folder's token, so a
redelivered task (its worker killed) resumes its own fold at once (workers/store/aggregates.py).
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

import neo4j
import redis
from celery.exceptions import SoftTimeLimitExceeded

from workers.celery_app import CPU_QUEUE, GPU_QUEUE, celery_app, loaded_process_resources
from workers.pipeline import jobs
from workers.pipeline.config import get_pipeline_settings
from workers.process import process_driver, process_model_cache, process_redis
from workers.settings import get_settings
from workers.store.aggregates import FoldBusy, fold_corpus
from workers.store.writer import GraphBusy

if TYPE_CHECKING:
    from workers.pipeline.compute import ModelCache

# Errors that go away by themselves (server restarting, lock conflicts, a lease held by a duplicate).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    neo4j.exceptions.ServiceUnavailable,
    neo4j.exceptions.SessionExpired,
    neo4j.exceptions.TransientError,
    neo4j.exceptions.DatabaseUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
    GraphBusy,
    FoldBusy,
)


@celery_app.task(name="atlas.ping", acks_late=True)
def ping(payload: str = "ping", delay_s: float = 0.0) -> dict[str, Any]:
    """Echo ``payload`` with the worker's host, pid and loaded resources (a JSON-serialisable dict).

    ``delay_s`` keeps the task running that long first, so fault tests can kill it mid-flight.
    """
    if delay_s > 0:
        time.sleep(min(delay_s, 60.0))
    return {
        "payload": payload,
        "pong": True,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "resources": loaded_process_resources(),
        "time": time.time(),
    }


def _process_clients() -> tuple[neo4j.Driver, redis.Redis, ModelCache]:
    return process_driver(), process_redis(), process_model_cache()


def enqueue_prompt(job_id: str, prompt_id: str, round_: int = 0) -> None:
    compute_prompt.apply_async(args=[prompt_id], task_id=jobs.task_id_for(job_id, prompt_id, round_), queue=GPU_QUEUE)


def enqueue_finish_corpus(job_id: str) -> None:
    finish_corpus.apply_async(args=[job_id], task_id=f"{job_id}/finish", queue=CPU_QUEUE)


def enqueue_fold(corpus_id: str, round_: int) -> None:
    fold_aggregates.apply_async(args=[corpus_id], task_id=f"{corpus_id}/fold/{round_}", queue=CPU_QUEUE)


@celery_app.task(name="atlas.compute_prompt", bind=True, acks_late=True)
def compute_prompt(self, prompt_id: str) -> str:  # noqa: ANN001 - bound Celery task
    """Compute and store the graph of one prompt. Returns the prompt's outcome."""
    from workers.pipeline.compute import PromptBusy, end_prompt, run_prompt

    cfg = get_pipeline_settings()
    settings = get_settings()
    db = settings.neo4j_database
    try:
        driver, r, cache = _process_clients()
        # The task id is the writer token: a retry or redelivery of this task takes over its own graph lease.
        return run_prompt(driver, r, cache, cfg, prompt_id, db, on_job_finished=enqueue_finish_corpus,
                          writer_token=self.request.id, on_fold_due=enqueue_fold, retry=self.request.retries > 0)
    except LookupError:
        return "missing"  # the job was deleted (a submission that failed half-way): nothing to do
    except SoftTimeLimitExceeded:
        limit = (self.request.timelimit or (None, None))[1] or settings.task_soft_time_limit_s
        end_prompt(*_process_clients()[:2], prompt_id, "failed",
                   f"exceeded the soft time limit of {limit}s (ATLAS_TASK_SOFT_TIME_LIMIT_S of the sender)",
                   token=self.request.id, database=db, on_job_finished=enqueue_finish_corpus)
        return "failed"
    except (*TRANSIENT_ERRORS, PromptBusy) as exc:
        # Waiting for another delivery or a lease always ends (a live one finishes, a dead one's heartbeat or
        # lease runs out): not given up on.
        waiting = isinstance(exc, (GraphBusy, PromptBusy)) and exc.retry_after_s is not None
        if self.request.retries >= cfg.max_retries and not waiting:
            try:
                end_prompt(*_process_clients()[:2], prompt_id, "failed",
                           f"gave up after {self.request.retries} retries of transient errors: {exc!r}",
                           token=self.request.id, database=db, on_job_finished=enqueue_finish_corpus)
            except TRANSIENT_ERRORS:
                pass  # still down: the prompt stays 'running' and the reaper picks it up later
            raise
        countdown = (exc.retry_after_s + 0.5 if waiting
                     else min(cfg.retry_backoff_max_s, 0.5 * 2 ** self.request.retries))
        try:  # the prompt's own retry is queued: the reaper must not take it for dead meanwhile
            if not isinstance(exc, PromptBusy):  # (a PromptBusy delivery does not own the prompt)
                jobs.beat(_process_clients()[1], jobs.job_id_of(prompt_id), prompt_id, self.request.id,
                          at=time.time() + countdown)
        except redis.exceptions.RedisError:
            pass  # Redis down: the retry may be lost with it, and then the reaper re-enqueues
        raise self.retry(exc=exc, countdown=countdown,
                         max_retries=self.request.retries + 1 if waiting else cfg.max_retries) from exc


@celery_app.task(name="atlas.fold_aggregates", bind=True, acks_late=True, max_retries=10)
def fold_aggregates(self, corpus_id: str) -> dict[str, Any]:  # noqa: ANN001 - bound Celery task
    """Incremental fold of the corpus's pending graphs. Another folder at work is not an error: it, or the
    corpus-done task, folds what is pending."""
    settings = get_settings()
    driver, _, _ = _process_clients()
    try:
        res = fold_corpus(driver, corpus_id, database=settings.neo4j_database, token=self.request.id)
    except FoldBusy:
        return {"corpus_id": corpus_id, "busy": True}
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=min(30, 2 ** self.request.retries)) from exc
    return {"corpus_id": corpus_id, "folds": res.folds, "graphs": res.graphs, "edges": res.edges,
            "seconds": round(res.seconds, 3)}


# A dead folder's lease (aggregates.DEFAULT_FOLD_LEASE_S) must expire before the corpus-done task can take its
# fold over: its retries span several minutes.
@celery_app.task(name="atlas.finish_corpus", bind=True, acks_late=True, max_retries=120)
def finish_corpus(self, job_id: str) -> dict[str, Any]:  # noqa: ANN001 - bound Celery task
    """Corpus-done step: fold the corpus's remaining graphs into its aggregates, summarise the corpus and
    normalise its aggregates, then move the job from 'aggregating' to its final state (all idempotent)."""
    from workers.pipeline.corpus import summarise_corpus

    settings = get_settings()
    db = settings.neo4j_database
    driver, _, _ = _process_clients()
    try:
        corpus_id = jobs.job_status(driver, job_id, db, max_failures=0)["corpus_id"]
        fold = fold_corpus(driver, corpus_id, database=db, token=self.request.id)
        summary = summarise_corpus(driver, corpus_id, db)
        state = jobs.complete_aggregation(driver, job_id, db)
        if state == jobs.AGGREGATING:  # a graph became pending after our last plan (cannot happen once every
            raise FoldBusy(f"job {job_id}: graphs of corpus {corpus_id} still unfolded")  # prompt is final)
    except LookupError:
        return {"job_id": job_id, "missing": True}
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=min(5, 2 ** self.request.retries)) from exc
    return {**summary, "job_state": state, "folded_graphs": fold.graphs, "fold_seconds": round(fold.seconds, 3)}
