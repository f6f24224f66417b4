"""Celery tasks. Small, idempotent, taking ids and plain values; the work lives in library code.

``atlas.ping`` proves the whole path (client -> Redis -> worker pool process -> result backend) and
reports which worker process ran it and which per-process resources that process has made so far.

``atlas.compute_prompt(prompt_id)`` (gpu queue) computes and stores one prompt's graph
(``workers.pipeline.compute.run_prompt``); its task id is derived from (job, prompt). Transient Neo4j /
Redis errors are retried with the policy of ``workers/retries.py``; soft/hard time limits come from the settings.
``atlas.finish_corpus(job_id)`` (cpu queue) is sent by whichever prompt completed the job's counter: it folds
the corpus's remaining graphs into its aggregates, summarises the corpus and moves the job from
``aggregating`` to its final state. ``atlas.fold_aggregates(corpus_id)`` (cpu queue) is an incremental fold,
sent every ``ATLAS_PIPELINE_FOLD_EVERY`` stored graphs. Both use their task id as the folder's token, so a
redelivered task (its worker killed) resumes its own fold at once (workers/store/aggregates.py).

Models load lazily: the first task that needs one loads it into the process's one model cache
(``workers/process.py``); nothing is loaded when a pool process starts.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from workers.celery_app import CPU_QUEUE, GPU_QUEUE, celery_app
from workers.pipeline import jobs
from workers.pipeline.config import get_pipeline_settings
from workers.process import loaded, process_driver, process_model_cache, process_redis
from workers.retries import TRANSIENT_ERRORS, backoff_s, retry_policy
from workers.settings import get_settings
from workers.store.aggregates import FoldBusy, fold_corpus
from workers.store.writer import GraphBusy

_cfg = get_pipeline_settings()


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
        "resources": loaded(),
        "time": time.time(),
    }


def fail_prompt(task, prompt_id: str, reason: str) -> None:  # noqa: ANN001 - bound Celery task
    """End the prompt as failed with ``reason`` (its delivery's token: a stale delivery changes nothing) and
    send the corpus-done task if it was the job's last prompt."""
    from workers.pipeline.compute import end_prompt

    end_prompt(process_driver(), process_redis(), prompt_id, "failed", reason, token=task.request.id,
               database=get_settings().neo4j_database, on_job_finished=enqueue_finish_corpus)


def enqueue_prompt(job_id: str, prompt_id: str, round_: int = 0) -> None:
    compute_prompt.apply_async(args=[prompt_id], task_id=jobs.task_id_for(job_id, prompt_id, round_), queue=GPU_QUEUE)


def enqueue_finish_corpus(job_id: str) -> None:
    finish_corpus.apply_async(args=[job_id], task_id=f"{job_id}/finish", queue=CPU_QUEUE)


def enqueue_fold(corpus_id: str, round_: int) -> None:
    fold_aggregates.apply_async(args=[corpus_id], task_id=f"{corpus_id}/fold/{round_}", queue=CPU_QUEUE)


# Retries by hand, with the declared policy (workers/retries.py), because it must act before each one: refresh
# its heartbeat so the reaper does not take the queued retry for a dead worker, wait out another delivery or a
# dead writer's lease without spending an attempt, and fail the prompt (not just the task) when it gives up.
@celery_app.task(name="atlas.compute_prompt", bind=True, acks_late=True,
                 **retry_policy(max_retries=_cfg.max_retries, backoff_max_s=int(_cfg.retry_backoff_max_s),
                                autoretry=False))
def compute_prompt(self, prompt_id: str) -> str:  # noqa: ANN001 - bound Celery task
    """Compute and store the graph of one prompt. Returns the prompt's outcome."""
    from workers.pipeline.compute import PromptBusy, run_prompt

    settings = get_settings()
    try:
        # The task id is the writer token: a retry or redelivery of this task takes over its own graph lease.
        return run_prompt(process_driver(), process_redis(), process_model_cache(), get_pipeline_settings(),
                          prompt_id, settings.neo4j_database, on_job_finished=enqueue_finish_corpus,
                          writer_token=self.request.id, on_fold_due=enqueue_fold, retry=self.request.retries > 0)
    except LookupError:
        return "missing"  # the job was deleted (a submission that failed half-way): nothing to do
    except SoftTimeLimitExceeded:
        limit = (self.request.timelimit or (None, None))[1] or settings.task_soft_time_limit_s
        fail_prompt(self, prompt_id,
                    f"exceeded the soft time limit of {limit}s (ATLAS_TASK_SOFT_TIME_LIMIT_S of the sender)")
        return "failed"
    except (*TRANSIENT_ERRORS, PromptBusy) as exc:
        # Waiting for another delivery or a lease always ends (a live one finishes, a dead one's heartbeat or
        # lease runs out): not given up on.
        waiting = isinstance(exc, (GraphBusy, PromptBusy)) and exc.retry_after_s is not None
        if self.request.retries >= self.max_retries and not waiting:
            try:
                fail_prompt(self, prompt_id, f"gave up after {self.request.retries} retries of transient errors: "
                                             f"{exc!r}")
            except TRANSIENT_ERRORS:
                pass  # still down: the prompt stays 'running' and the reaper picks it up later
            raise
        countdown = exc.retry_after_s + 0.5 if waiting else backoff_s(self)
        try:  # the prompt's own retry is queued: the reaper must not take it for dead meanwhile
            if not isinstance(exc, PromptBusy):  # (a PromptBusy delivery does not own the prompt)
                jobs.beat(process_redis(), jobs.job_id_of(prompt_id), prompt_id, self.request.id,
                          at=time.time() + countdown)
        except redis.exceptions.RedisError:
            pass  # Redis down: the retry may be lost with it, and then the reaper re-enqueues
        raise self.retry(exc=exc, countdown=countdown,
                         max_retries=self.request.retries + 1 if waiting else self.max_retries) from exc


@celery_app.task(name="atlas.fold_aggregates", bind=True, acks_late=True,
                 **retry_policy(max_retries=10, backoff_max_s=30))
def fold_aggregates(self, corpus_id: str) -> dict[str, Any]:  # noqa: ANN001 - bound Celery task
    """Incremental fold of the corpus's pending graphs. Another folder at work is not an error: it, or the
    corpus-done task, folds what is pending."""
    try:
        res = fold_corpus(process_driver(), corpus_id, database=get_settings().neo4j_database, token=self.request.id)
    except FoldBusy:
        return {"corpus_id": corpus_id, "busy": True}
    return {"corpus_id": corpus_id, "folds": res.folds, "graphs": res.graphs, "edges": res.edges,
            "seconds": round(res.seconds, 3)}


# A dead folder's lease (aggregates.DEFAULT_FOLD_LEASE_S, 120 s) must expire before the corpus-done task can take
# its fold over: its retries (a few seconds each, 120 of them) span several minutes.
@celery_app.task(name="atlas.finish_corpus", bind=True, acks_late=True,
                 **retry_policy(max_retries=120, backoff_max_s=5))
def finish_corpus(self, job_id: str) -> dict[str, Any]:  # noqa: ANN001 - bound Celery task
    """Corpus-done step: fold the corpus's remaining graphs into its aggregates, summarise the corpus and
    normalise its aggregates, then move the job from 'aggregating' to its final state (all idempotent)."""
    from workers.pipeline.corpus import summarise_corpus

    db = get_settings().neo4j_database
    driver = process_driver()
    try:
        corpus_id = jobs.job_status(driver, job_id, db, max_failures=0)["corpus_id"]
        fold = fold_corpus(driver, corpus_id, database=db, token=self.request.id)
        summary = summarise_corpus(driver, corpus_id, db)
        state = jobs.complete_aggregation(driver, job_id, db)
        if state == jobs.AGGREGATING:  # a graph became pending after our last plan (cannot happen once every
            raise FoldBusy(f"job {job_id}: graphs of corpus {corpus_id} still unfolded")  # prompt is final)
    except LookupError:
        return {"job_id": job_id, "missing": True}
    return {**summary, "job_state": state, "folded_graphs": fold.graphs, "fold_seconds": round(fold.seconds, 3)}
