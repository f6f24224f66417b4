"""Feature pages. Feature keys contain '/' and '#': send '#' as %23 (``/features/dset/L1.mlp%2317``)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request

from service.api.deps import driver_of, settings_of
from service.query import features as q
from service.schemas.features import ActivationPageOut, FeaturePageOut

router = APIRouter(prefix="/features", tags=["features"])


@router.get("/{fkey:path}/activations", response_model=ActivationPageOut)
def feature_activations(request: Request, fkey: str, corpus_id: str | None = None,
                        offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(20, ge=1, le=500),
                        before: int = Query(4, ge=0, le=64), after: int = Query(1, ge=0, le=64)) -> ActivationPageOut:
    """Instances of the feature by activation (desc), with token context; paginated."""
    items = q.top_activations(driver_of(request), fkey, corpus_id, offset=offset, limit=limit + 1, before=before,
                              after=after, database=settings_of(request).neo4j_database)
    more = len(items) > limit
    return ActivationPageOut(items=items[:limit], offset=offset, limit=limit, next_offset=offset + limit if more else None)


@router.get("/{fkey:path}", response_model=FeaturePageOut, responses={404: {"description": "Unknown feature"}})
def feature_page(request: Request, fkey: str, corpus_id: str | None = Query(None, examples=["ioi-demo"]),
                 top: int = Query(10, ge=0, le=200), neighbours: int = Query(10, ge=0, le=200),
                 before: int = Query(4, ge=0, le=64), after: int = Query(1, ge=0, le=64)) -> FeaturePageOut:
    """Top activations with context, strongest upstream/downstream features (corpus aggregates, normalised
    by source activation mass), and how often the feature is in the corpus' circuits."""
    try:
        page = q.feature_page(driver_of(request), fkey, corpus_id, top=top, neighbours=neighbours, before=before,
                              after=after, database=settings_of(request).neo4j_database)
    except q.FeatureNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return FeaturePageOut(**page)
