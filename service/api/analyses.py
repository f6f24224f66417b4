"""Cross-prompt analyses as jobs: POST queues one (a Celery task on the cpu queue), GET reads its state."""

from __future__ import annotations

from typing import Annotated, Literal

import neo4j
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from service.api.deps import DatabaseDep, DriverDep
from service.auth import ApiKey, key_responses, require_scope
from service.schemas.analyses import AnalysisOut, AnalysisRequest
from workers.analysis import jobs

router = APIRouter(prefix="/analyses", tags=["analyses"])


def enqueue_analysis(driver: neo4j.Driver, db: str | None, body: AnalysisRequest, key: ApiKey) -> AnalysisOut:
    from workers.celery_app import CPU_QUEUE, celery_app

    analysis_id = jobs.create_analysis(driver, body.kind, body.params, key.key_id, database=db)
    try:
        celery_app.send_task("atlas.run_analysis", args=[analysis_id], queue=CPU_QUEUE, task_id=analysis_id)
    except Exception as exc:  # noqa: BLE001 - broker down: record why, tell the client
        jobs.fail_analysis(driver, analysis_id, f"could not enqueue: {exc}", database=db)
        raise HTTPException(503, f"the job queue (Redis) is unavailable: {exc}") from None
    return AnalysisOut(**jobs.get_analysis(driver, analysis_id, database=db))


@router.post("", response_model=AnalysisOut, status_code=202,
             responses=key_responses("write"))
def create_analysis(body: AnalysisRequest, key: Annotated[ApiKey, Depends(require_scope("write"))],
                    driver: DriverDep, db: DatabaseDep) -> AnalysisOut:
    """Queue an analysis; poll GET /analyses/{analysis_id} until status is done or failed."""
    return enqueue_analysis(driver, db, body, key)


@router.get("/{analysis_id}", response_model=AnalysisOut, responses={404: {"description": "Unknown analysis"}})
def get_analysis(analysis_id: str, driver: DriverDep, db: DatabaseDep) -> AnalysisOut:
    a = jobs.get_analysis(driver, analysis_id, database=db)
    if a is None:
        raise HTTPException(404, f"no analysis {analysis_id!r}")
    return AnalysisOut(**a)


_MEDIA = {"png": "image/png", "svg": "image/svg+xml"}


@router.get("/{analysis_id}/plot.{fmt}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}},
                       404: {"description": "Unknown analysis, or a kind without a picture"},
                       409: {"description": "The analysis is not done yet"}})
def get_analysis_plot(analysis_id: str, fmt: Literal["png", "svg"], driver: DriverDep, db: DatabaseDep) -> Response:
    """A picture of a done analysis' result (workers/analysis/plots.py: recurring_features, consensus_circuit,
    circuit_difference, interventions); the JSON stays at GET /analyses/{analysis_id}."""
    from workers.analysis.plots import NoPlot, plot_analysis

    a = jobs.get_analysis(driver, analysis_id, database=db)
    if a is None:
        raise HTTPException(404, f"no analysis {analysis_id!r}")
    if a["status"] != "done":
        raise HTTPException(409, f"analysis {analysis_id!r} is {a['status']}; its picture exists once it is done")
    try:
        return Response(plot_analysis(a["kind"], a["result"], fmt), media_type=_MEDIA[fmt])
    except NoPlot as exc:
        raise HTTPException(404, str(exc)) from None
