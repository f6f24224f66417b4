"""Interventions on a stored graph's prompt: ``POST /graphs/{graph_id}/interventions`` (key: write) queues an
analysis job (kind ``interventions``, workers/analysis/interventions.py); poll ``GET /analyses/{id}``, whose
result is ``service.schemas.interventions.InterventionResultOut``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.api.analyses import enqueue_analysis
from service.api.deps import DatabaseDep, DriverDep
from service.auth import ApiKey, key_responses, require_scope
from service.query import circuits as cq
from service.schemas.analyses import AnalysisOut, AnalysisRequest
from service.schemas.interventions import InterventionRequest
from workers.errors import InvalidInput

router = APIRouter(prefix="/graphs", tags=["circuits"])


@router.post("/{graph_id}/interventions", response_model=AnalysisOut, status_code=202,
             responses=key_responses("write", {404: {"description": "Unknown graph"},
                                                422: {"description": "A field that cannot be used (detail[].loc names it)"}}))
def request_interventions(graph_id: str, body: InterventionRequest,
                          key: Annotated[ApiKey, Depends(require_scope("write"))], driver: DriverDep,
                          db: DatabaseDep) -> AnalysisOut:
    """Queue a worker to ablate, scale or set the chosen features (together) of this graph's prompt. The result
    gives, per target, the frozen change, the change the edges predict (equal to it) and the live change
    (features recomputed), and the largest live logit changes."""
    cq.get_graph(driver, graph_id, database=db)
    if body.mode != "ablate" and body.value is None:
        raise InvalidInput(("body", "value"), f"mode {body.mode!r} needs a value (the factor or the activation)")
    stored = {r["n"]: r["k"] for r in driver.execute_query(
        "MATCH (n:Node {graph_id: $g}) WHERE n.node_id IN $ids RETURN n.node_id AS n, n.kind AS k",
        g=graph_id, ids=body.node_ids, database_=db, routing_="r").records}
    for i, node in enumerate(body.node_ids):
        if stored.get(node) != "feature":
            what = "is not a feature" if node in stored else "is not a node of this graph"
            raise InvalidInput(("body", "node_ids", i), f"{node!r} {what}; interventions edit the graph's feature "
                                                        "nodes")
    params = {"graph_id": graph_id, **body.model_dump(exclude_none=True)}
    # Not a kind of the generic POST /analyses: its parameters are validated here only.
    return enqueue_analysis(driver, db, AnalysisRequest.model_construct(kind="interventions", params=params), key)
