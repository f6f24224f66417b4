"""POST /cypher: user Cypher, read-only and bounded (service/query/user_cypher.py); needs a 'cypher' key.

The concurrency cap (``ATLAS_CYPHER_MAX_CONCURRENT``) holds across every API process sharing the Redis at
``ATLAS_REDIS_URL``; a refusal is a 429 with ``Retry-After`` and ``{"rule": "concurrency-cap", ...}``.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.api.deps import DriverDep, RedisDep, SettingsDep
from service.auth import ApiKey, key_responses, require_scope
from service.query.user_cypher import CypherLimits, CypherRefused, CypherRunner, SharedSlots
from service.schemas.cypher import CypherOut, CypherRefusal, CypherRequest

router = APIRouter(tags=["cypher"])
_lock = threading.Lock()


def cypher_runner(request: Request, settings: SettingsDep, driver: DriverDep, r: RedisDep) -> CypherRunner:
    """The app's one runner (its limits and the shared concurrency slots), made on first use."""
    state = request.app.state
    with _lock:
        runner = getattr(state, "cypher_runner", None)
        if runner is None:
            limits = CypherLimits()
            slots = SharedSlots(r, settings.cypher_max_concurrent, CypherRunner.lease_s(limits))
            runner = state.cypher_runner = CypherRunner(driver, settings.neo4j_database, limits, slots)
    return runner


@router.post("/cypher", response_model=CypherOut,
             responses=key_responses("cypher", {
                 422: {"description": "Refused: names the rule; or the body is invalid (FastAPI's validation error)",
                       "content": {"application/json": {"schema": {"anyOf": [
                           {"$ref": "#/components/schemas/CypherRefusal"},
                           {"$ref": "#/components/schemas/HTTPValidationError"}]}}}},
                 408: {"model": CypherRefusal, "description": "Timed out"},
                 429: {"model": CypherRefusal, "description": "Concurrency cap (across all API processes); "
                                                              "Retry-After in seconds"},
                 503: {"model": CypherRefusal, "description": "The cap cannot be checked (Redis down)"}}))
def run_cypher(body: CypherRequest, key: Annotated[ApiKey, Depends(require_scope("cypher"))],  # noqa: ANN201
               runner: Annotated[CypherRunner, Depends(cypher_runner)]):
    """Run a read-only query. Refusals answer ``{"rule", "message"}``; results are capped in rows and bytes
    (``truncated_by`` says which cap cut the stream)."""
    try:
        result = runner.run(body.query, body.parameters, max_rows=body.max_rows)
    except CypherRefused as exc:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return JSONResponse({"rule": exc.rule, "message": exc.message}, status_code=exc.status, headers=headers)
    return CypherOut(**result.__dict__)
