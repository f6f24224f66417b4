"""Global circuits: corpus-aggregated neighbourhoods and paths between features, virtual weights."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from service.api.analyses import enqueue_analysis
from service.api.deps import DatabaseDep, DriverDep
from service.api.pagination import Offset, paginate
from service.auth import ApiKey, key_responses, require_scope
from service.query import global_circuits as q
from service.query.paths import MAX_HOPS_LIMIT, feature_paths
from service.schemas.analyses import AnalysisOut, AnalysisRequest
from service.schemas.features import BetweenOut, NeighbourPageOut
from service.schemas.virtual_weights import (
    VirtualWeightOut,
    VirtualWeightsProvenanceOut,
    VirtualWeightsRequest,
)

router = APIRouter(prefix="/global", tags=["global circuits"])


@router.get("/neighbours", response_model=NeighbourPageOut)
def neighbours(driver: DriverDep, db: DatabaseDep, fkey: str = Query(..., examples=["zoo-dset/L1.mlp#17"]),
               corpus_id: str | None = Query(None, description="Omit to sum over every corpus."),
               direction: Literal["upstream", "downstream"] = "upstream",
               rank_by: Literal["norm_w", "sum_abs_w", "n"] = "norm_w",
               offset: Offset = 0, limit: int = Query(20, ge=1, le=1000)) -> NeighbourPageOut:
    """The corpus-aggregated features feeding (upstream) or fed by (downstream) a feature; norm_w =
    sum_w / the source feature's total activation in the corpus."""
    page = paginate(lambda o, n: q.aggregate_neighbours(driver, fkey, corpus_id, direction, rank_by=rank_by, offset=o,
                                                        limit=n, database=db), offset, limit)
    return NeighbourPageOut(fkey=fkey, corpus_id=corpus_id, direction=direction, **page)


@router.get("/between", response_model=BetweenOut)
def between(driver: DriverDep, db: DatabaseDep, source: str, target: str, corpus_id: str,
            max_hops: int = Query(3, ge=1, le=MAX_HOPS_LIMIT), beam: int = Query(64, ge=1, le=4096),
            k: int = Query(10, ge=1, le=1000), fanout: int = Query(32, ge=1, le=1000),
            min_abs_w: float = Query(0.0, ge=0)) -> BetweenOut:
    """The direct aggregate edge and the strongest multi-hop paths between two features of a corpus."""
    direct = q.aggregate_edge(driver, source, target, corpus_id, database=db)
    paths = feature_paths(driver, corpus_id, source, target, max_hops=max_hops, beam=beam, k=k, fanout=fanout,
                          min_abs_w=min_abs_w, database=db)
    return BetweenOut(source=source, target=target, corpus_id=corpus_id, direct=direct,
                      paths=[p.to_dict() for p in paths])


@router.get("/virtual-weights", response_model=list[VirtualWeightOut])
def virtual_weights(driver: DriverDep, db: DatabaseDep, fkey: str, direction: Literal["upstream", "downstream"] = "upstream",
                    limit: int = Query(20, ge=1, le=1000)) -> list[VirtualWeightOut]:
    """Stored weight-level neighbours of a feature (compute them with POST /global/virtual-weights)."""
    return [VirtualWeightOut(**r) for r in q.virtual_weight_neighbours(driver, fkey, direction, limit=limit,
                                                                       database=db)]


@router.get("/virtual-weights/provenance", response_model=VirtualWeightsProvenanceOut,
            responses={404: {"description": "No virtual weights stored for this dictionary set"}})
def virtual_weights_provenance(driver: DriverDep, db: DatabaseDep, dictionary_set_id: str = Query(..., examples=["zoo-dset"])
                               ) -> VirtualWeightsProvenanceOut:
    """How the dictionary set's stored virtual weights were computed: the corpus and the dataset-average norm
    scale per layer they use, top_k, when."""
    prov = q.virtual_weight_provenance(driver, dictionary_set_id, database=db)
    if prov is None:
        raise HTTPException(404, f"no virtual weights stored for dictionary set {dictionary_set_id!r}; compute them "
                                 "with POST /global/virtual-weights")
    return VirtualWeightsProvenanceOut(**prov)


@router.post("/virtual-weights", response_model=AnalysisOut, status_code=202,
             responses=key_responses("write"))
def compute_virtual_weights(body: VirtualWeightsRequest, key: Annotated[ApiKey, Depends(require_scope("write"))],
                            driver: DriverDep, db: DatabaseDep) -> AnalysisOut:
    """Queue the virtual-weight job of a registered dictionary set (a worker measures the norm scale on the
    corpus, computes and stores the VW edges with their provenance)."""
    return enqueue_analysis(driver, db, AnalysisRequest(kind="virtual_weights", params=body.model_dump()), key)
