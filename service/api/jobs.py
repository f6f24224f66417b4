"""Job progress and cancellation (state in Neo4j and Redis, never in Celery result objects). Reading and
listing jobs is public (like every read); cancelling needs a ``write`` key that owns the job's corpus (or an
admin key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, DriverDep, RedisDep
from service.api.pagination import Offset, paginate
from service.auth import ApiKey, authorize_corpus, key_responses, require_scope
from service.query import corpora as q
from service.schemas.jobs import JobPageOut, JobStatus, JobTimelineOut
from workers.pipeline import jobs
from workers.vocabulary.defaults import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=JobPageOut)
def list_jobs(driver: DriverDep, db: DatabaseDep,
              state: JobState | None = Query(None, description="Only jobs in this state."),
              corpus_id: str | None = None, offset: Offset = 0, limit: int = Query(50, ge=1, le=1000)) -> JobPageOut:
    """Jobs, newest first, with their state and done/failed/cancelled/total (GET /jobs/{id} has the rest)."""
    return JobPageOut(**paginate(lambda o, n: q.list_jobs(driver, o, n, state=state, corpus_id=corpus_id, database=db),
                                 offset, limit))


@router.get("/{job_id}", response_model=JobStatus, responses={404: {}})
async def get_job(job_id: str, driver: DriverDep, db: DatabaseDep) -> JobStatus:
    """State, done/failed/cancelled/total prompts, throughput (prompts/min), ETA, failures with reasons."""
    try:
        status = await run_in_threadpool(jobs.job_status, driver, job_id, db)
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    return JobStatus(**status)


@router.get("/{job_id}/timeline", response_model=JobTimelineOut, responses={404: {}})
def get_job_timeline(job_id: str, driver: DriverDep, db: DatabaseDep,
                     bins: int = Query(30, ge=1, le=500)) -> JobTimelineOut:
    """Prompts finished per minute, and failures, over the job's run in ``bins`` equal intervals (the job page's
    plot)."""
    try:
        return JobTimelineOut(**q.job_timeline(driver, job_id, bins, database=db))
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None


@router.delete("/{job_id}", response_model=JobStatus, status_code=202,
               responses=key_responses("write", {404: {}}, also_forbidden="does not own the job's corpus"))
async def cancel_job(job_id: str, key: Annotated[ApiKey, Depends(require_scope("write"))], driver: DriverDep,
                     db: DatabaseDep, r: RedisDep) -> JobStatus:
    """Cancel: queued prompts are dropped at once, running ones stop at their next stage boundary and
    remove what they had written. A finished job is returned unchanged."""
    try:
        before = await run_in_threadpool(jobs.job_status, driver, job_id, db)
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    await run_in_threadpool(authorize_corpus, driver, key, before["corpus_id"], database=db)
    try:
        await run_in_threadpool(jobs.cancel_job, driver, r, job_id, db)
        status = await run_in_threadpool(jobs.job_status, driver, job_id, db)
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    return JobStatus(**status)
