"""The reaper: re-enqueue prompts whose heartbeat went stale (their worker died without Celery noticing,
e.g. the whole worker host or its main process was killed, so the message waits for Redis's visibility
timeout). A still-alive duplicate is harmless: the graph writer and the prompt counter are idempotent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis as redis_lib
from neo4j import Driver

from workers.pipeline import jobs

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
        beat = r.hget(jobs.heartbeat_key(rec["j"]), rec["p"])
        last = float(beat) if beat is not None else float(rec["t"] or 0)
        if now - last > stale_after_s:
            out.append((rec["j"], rec["p"]))
    return out


def reap_once(driver: Driver, r: redis_lib.Redis, enqueue: Enqueue, stale_after_s: float,
              database: str | None = None) -> list[str]:
    """One pass; returns the prompt ids re-enqueued."""
    done = []
    for job_id, prompt_id in stale_prompts(driver, r, stale_after_s, database):
        round_ = jobs.requeue_prompt(driver, prompt_id, database)
        if round_ is None:
            continue  # it finished meanwhile
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
