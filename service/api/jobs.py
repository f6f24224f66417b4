"""Job progress and cancellation (state in Neo4j and Redis, never in Celery result objects). Reading and
listing jobs is public (like every read); cancelling needs a ``write`` key that owns the job's corpus (or an
admin key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from service.api.deps import driver_of, redis_of, settings_of
from service.auth import ApiKey, authorize_corpus, require_scope
from service.query import corpora as q
from service.schemas.jobs import JobPageOut, JobStatus, JobTimelineOut
from workers.pipeline import jobs
from workers.vocabulary.defaults import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=JobPageOut)
def list_jobs(request: Request, state: JobState | None = Query(None, description="Only jobs in this state."),
              corpus_id: str | None = None, offset: int = Query(0, ge=0, le=10_000_000),
              limit: int = Query(50, ge=1, le=1000)) -> JobPageOut:
    """Jobs, newest first, with their state and done/failed/cancelled/total (GET /jobs/{id} has the rest)."""
    items = q.list_jobs(driver_of(request), offset, limit + 1, state=state, corpus_id=corpus_id,
                        database=settings_of(request).neo4j_database)
    more = len(items) > limit
    return JobPageOut(items=items[:limit], offset=offset, limit=limit, next_offset=offset + limit if more else None)


@router.get("/{job_id}", response_model=JobStatus, responses={404: {}})
async def get_job(job_id: str, request: Request) -> JobStatus:
    """State, done/failed/cancelled/total prompts, throughput (prompts/min), ETA, failures with reasons."""
    try:
        status = await run_in_threadpool(jobs.job_status, driver_of(request), job_id, settings_of(request).neo4j_database)
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    return JobStatus(**status)


@router.get("/{job_id}/timeline", response_model=JobTimelineOut, responses={404: {}})
def get_job_timeline(job_id: str, request: Request, bins: int = Query(30, ge=1, le=500)) -> JobTimelineOut:
    """Prompts finished per minute, and failures, over the job's run in ``bins`` equal intervals (the job page's
    plot)."""
    try:
        return JobTimelineOut(**q.job_timeline(driver_of(request), job_id, bins,
                                               database=settings_of(request).neo4j_database))
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None


@router.delete("/{job_id}", response_model=JobStatus, status_code=202,
               responses={401: {"description": "No or invalid API key"},
                          403: {"description": "Key lacks 'write' or does not own the job's corpus"}, 404: {}})
async def cancel_job(job_id: str, request: Request, key: ApiKey = Depends(require_scope("write"))) -> JobStatus:
    """Cancel: queued prompts are dropped at once, running ones stop at their next stage boundary and
    remove what they had written. A finished job is returned unchanged."""
    driver, db = driver_of(request), settings_of(request).neo4j_database
    try:
        before = await run_in_threadpool(jobs.job_status, driver, job_id, db)
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    await run_in_threadpool(authorize_corpus, driver, key, before["corpus_id"], database=db)
    try:
        await run_in_threadpool(jobs.cancel_job, driver, redis_of(request), job_id, db)
        status = await run_in_threadpool(jobs.job_status, driver, job_id, db)
    except LookupError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    return JobStatus(**status)
