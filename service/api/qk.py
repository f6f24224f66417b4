"""QK pairs of a head: ``POST /graphs/{graph_id}/qk`` (key: write) queues an analysis job (kind ``qk_pairs``)
that a worker computes from the graph's registered model and dictionaries (workers/analysis/qk.py); poll
``GET /analyses/{analysis_id}`` for its result (shape: ``service.schemas.qk.QKResultOut``).

Same pattern as ``POST /graphs/{id}/local-circuits``. What can be checked without the model is checked here
(a 422 naming the field, nothing queued): the graph exists and is complete, a head was given or
``from_circuit``, not both, positions within the prompt and causal, the layer below the graph's layer count.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.api.analyses import enqueue_analysis
from service.api.deps import DatabaseDep, DriverDep
from service.auth import ApiKey, key_responses, require_scope
from service.query import circuits as cq
from service.schemas.analyses import AnalysisOut, AnalysisRequest
from service.schemas.qk import QKRequest
from workers.errors import InvalidInput

router = APIRouter(prefix="/graphs", tags=["circuits"])

_HEAD_FIELDS = ("layer", "head", "query_position", "key_position")

# Logit and target nodes sit one layer above the last block (workers/engine/graph.py), so their layer is the
# model's layer count; the prompt length is the stored token list's.
_SHAPE = """
MATCH (n:Node {graph_id: $g}) WHERE n.kind IN ['logit', 'target']
RETURN max(n.layer) AS n_layers
"""


def check_request(body: QKRequest, n_positions: int | None, n_layers: int | None) -> None:
    """Raises InvalidInput naming the first field that cannot be used."""
    given = [f for f in _HEAD_FIELDS if getattr(body, f) is not None]
    if body.from_circuit:
        if given:
            raise InvalidInput(("body", given[0]), f"give either from_circuit or a head ({', '.join(_HEAD_FIELDS)}), "
                                                   "not both")
        return
    missing = [f for f in _HEAD_FIELDS if getattr(body, f) is None]
    if missing:
        raise InvalidInput(("body", missing[0]), f"{', '.join(missing)} missing: give layer, head, query_position "
                                                 "and key_position, or from_circuit: true")
    if n_positions is not None:
        for f in ("query_position", "key_position"):
            if getattr(body, f) >= n_positions:
                raise InvalidInput(("body", f), f"{f} {getattr(body, f)} is outside the prompt: it has {n_positions} "
                                                f"tokens (positions 0..{n_positions - 1})")
    if body.key_position > body.query_position:
        raise InvalidInput(("body", "key_position"), f"key_position {body.key_position} is after query_position "
                                                     f"{body.query_position}; attention is causal")
    if n_layers is not None and body.layer >= n_layers:
        raise InvalidInput(("body", "layer"), f"layer {body.layer} does not exist: the model has layers "
                                              f"0..{n_layers - 1}")


@router.post("/{graph_id}/qk", response_model=AnalysisOut, status_code=202,
             responses=key_responses("write", {404: {"description": "Unknown graph"},
                                                422: {"description": "A field that cannot be used (detail[].loc names it)"}}))
def request_qk_pairs(graph_id: str, body: QKRequest, key: Annotated[ApiKey, Depends(require_scope("write"))],
                     driver: DriverDep, db: DatabaseDep) -> AnalysisOut:
    """Queue a worker to split a head's pre-softmax attention score into (query node, key node) pairs plus
    bias terms, exactly (they sum to the score). When the job is done its result lists, per head, the top_k
    pairs, the sum of the others, the bias terms and the score."""
    graph = cq.get_graph(driver, graph_id, database=db)
    prov = graph.get("provenance") if isinstance(graph.get("provenance"), dict) else {}
    tokens = prov.get("tokens")
    n_layers = driver.execute_query(_SHAPE, g=graph_id, database_=db, routing_="r").records[0]["n_layers"]
    check_request(body, len(tokens) if tokens else None, n_layers)
    params = {"graph_id": graph_id, **body.model_dump(exclude_none=True)}
    # 'qk_pairs' is not a kind of the generic POST /analyses: its parameters are validated here only.
    return enqueue_analysis(driver, db, AnalysisRequest.model_construct(kind="qk_pairs", params=params), key)
