"""Feature pages, feature search and feature labels. Feature keys contain '/' and '#': send '#' as %23
(``/features/dset/L1.mlp%2317``). ``GET /features?q=`` (no trailing slash) is the search; every path below
``/features/`` is a feature key, so the two never collide. Labelling (``PUT``/``DELETE
/features/{fkey}/label``) needs a ``write`` key, whose key_id is stored as the label's author."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from service.api.deps import DatabaseDep, DriverDep
from service.api.pagination import Offset, paginate
from service.auth import ApiKey, key_responses, require_scope
from service.query import features as q
from service.query import labels
from service.query.features import MAX_QUERY_CHARS
from service.query.features import search_features as run_search
from service.schemas.features import (
    ActivationPageOut,
    FeatureLabelIn,
    FeatureLabelOut,
    FeaturePageOut,
    FeatureSearchOut,
    LogitEffectsOut,
)

router = APIRouter(prefix="/features", tags=["features"])


@router.get("", response_model=FeatureSearchOut,
            responses={422: {"description": "A parameter that cannot be used (detail[].loc names it)"}})
def search_features(
    driver: DriverDep, db: DatabaseDep,
    q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, examples=["L2.mlp", "mlp/L2/", "L2:123", "John"],
                   description="A feature key or prefix (dset/L1.mlp#17, L2, L2.mlp, L2:123, L2.mlp#123, mlp/L2/, "
                               "#123; 'key:' forces this reading), 'label:' and text a feature label contains "
                               "(case-insensitive), or a token the features fire on ('token:' forces it; "
                               "case-insensitive, surrounding spaces ignored)."),
    corpus_id: str | None = Query(None, description="Only graphs of this corpus count (and only features in it)."),
    limit: int = Query(20, ge=1, le=200),
    cursor: str | None = Query(None, description="next_cursor of the previous page."),
    top_tokens: int = Query(3, ge=0, le=20, description="Tokens listed per feature."),
) -> FeatureSearchOut:
    """Features ranked by the graphs they appear in (key search) or fire on the token in (token search), then
    activation. No match is a 200 with an empty list."""
    found = run_search(driver, q, corpus_id, limit=limit, cursor=cursor, top_tokens=top_tokens, database=db)
    return FeatureSearchOut(**found)


@router.get("/{fkey:path}/activations", response_model=ActivationPageOut)
def feature_activations(driver: DriverDep, db: DatabaseDep, fkey: str, corpus_id: str | None = None,
                        offset: Offset = 0, limit: int = Query(20, ge=1, le=500),
                        before: int = Query(8, ge=0, le=64), after: int = Query(4, ge=0, le=64)) -> ActivationPageOut:
    """Instances of the feature by activation (desc), with token context; paginated."""
    return ActivationPageOut(**paginate(lambda o, n: q.top_activations(driver, fkey, corpus_id, offset=o, limit=n,
                                                                       before=before, after=after, database=db),
                                        offset, limit))


_logit_lock = threading.Lock()


@router.get("/{fkey:path}/logit-effects", response_model=LogitEffectsOut,
            responses={404: {"description": "Unknown feature, or its dictionary set / model is not registered"}})
def feature_logit_effects(request: Request, driver: DriverDep, db: DatabaseDep, fkey: str,
                          k: int = Query(10, ge=1, le=200)) -> LogitEffectsOut:
    """The tokens the feature's decoder direction promotes and suppresses most through the direct path (final
    norm with its scale frozen, de-meaned unembedding), computed with its registered model and dictionaries."""
    from workers.analysis.logit_effects import NoLogitEffects, registered_feature_logit_effects
    from workers.pipeline.compute import ModelCache

    state = request.app.state
    with _logit_lock:  # one load at a time; the cache keeps the last model + dictionary set
        cache = getattr(state, "logit_effects_cache", None)
        if cache is None:
            cache = state.logit_effects_cache = ModelCache(size=1)
        try:
            return LogitEffectsOut(**registered_feature_logit_effects(driver, cache, fkey, k, database=db))
        except (LookupError, NoLogitEffects) as exc:
            raise HTTPException(404, str(exc)) from None


@router.get("/{fkey:path}", response_model=FeaturePageOut, responses={404: {"description": "Unknown feature"}})
def feature_page(driver: DriverDep, db: DatabaseDep, fkey: str, corpus_id: str | None = Query(None, examples=["ioi-demo"]),
                 top: int = Query(10, ge=0, le=200), neighbours: int = Query(10, ge=0, le=200),
                 before: int = Query(8, ge=0, le=64), after: int = Query(4, ge=0, le=64)) -> FeaturePageOut:
    """Top activations with context (each token with the feature's activation there), strongest upstream/
    downstream features (corpus aggregates, normalised by source activation mass), how often the feature is in
    the corpus' circuits, and a histogram of its activations with its density per token."""
    page = q.feature_page(driver, fkey, corpus_id, top=top, neighbours=neighbours, before=before, after=after,
                          database=db)
    return FeaturePageOut(**page)


_WRITE_RESPONSES = key_responses("write", {404: {"description": "Unknown feature"}})


@router.put("/{fkey:path}/label", response_model=FeatureLabelOut, responses=_WRITE_RESPONSES)
def label_feature(fkey: str, body: FeatureLabelIn, key: Annotated[ApiKey, Depends(require_scope("write"))],
                  driver: DriverDep, db: DatabaseDep) -> FeatureLabelOut:
    """Attach a label and a note to a feature (replacing any); circuits, the Neuronpedia export (``clerp``),
    feature search and the viewer show it."""
    return FeatureLabelOut(**labels.set_label(driver, fkey, body.label, body.note, key.key_id, database=db))


@router.delete("/{fkey:path}/label", status_code=204, responses=_WRITE_RESPONSES)
def unlabel_feature(fkey: str, key: Annotated[ApiKey, Depends(require_scope("write"))], driver: DriverDep,
                    db: DatabaseDep) -> Response:
    """Remove a feature's label and note."""
    labels.clear_label(driver, fkey, database=db)
    return Response(status_code=204)
