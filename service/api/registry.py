"""Register models and dictionary sets by path (content-hashed in Neo4j); list them. Registering needs an API
key with the ``write`` scope and a path under ``ATLAS_REGISTRY_ROOTS`` (403 naming the roots otherwise) holding
no pickled weights (422); listing is public."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.deps import driver_of, settings_of
from service.auth import ApiKey, require_scope
from service.schemas.registry import (
    DictionarySetOut,
    DictionarySetRegistration,
    ModelOut,
    ModelRegistration,
    RegistryOut,
)
from workers.pipeline import registry

router = APIRouter(prefix="/registry", tags=["registry"])


def _error(exc: registry.RegistryError) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}]},
                        status_code=exc.status)


@router.post("/models", response_model=ModelOut, status_code=201,
             responses={401: {"description": "No or invalid API key"},
                        403: {"description": "Key lacks 'write', or the path is outside ATLAS_REGISTRY_ROOTS"},
                        422: {}})
async def register_model(body: ModelRegistration, request: Request,  # noqa: ANN201
                         key: ApiKey = Depends(require_scope("write"))):
    """Register (or re-register after its files changed) a model under ``model_id``."""
    driver, db = driver_of(request), settings_of(request).neo4j_database
    try:
        reg = await run_in_threadpool(registry.register_model, driver, body.model_id, body.path, db,
                                      roots=settings_of(request).registry_root_paths)
    except registry.RegistryError as exc:
        return _error(exc)
    return ModelOut(**asdict(reg))


@router.post("/dictionary-sets", response_model=DictionarySetOut, status_code=201,
             responses={401: {"description": "No or invalid API key"},
                        403: {"description": "Key lacks 'write', or the path is outside ATLAS_REGISTRY_ROOTS"},
                        422: {}})
async def register_dictionary_set(body: DictionarySetRegistration, request: Request,  # noqa: ANN201
                                  key: ApiKey = Depends(require_scope("write"))):
    """Register a dictionary set directory for a registered model."""
    driver, db = driver_of(request), settings_of(request).neo4j_database
    try:
        reg = await run_in_threadpool(registry.register_dictionary_set, driver, body.dictionary_set_id, body.path,
                                      body.model_id, db, roots=settings_of(request).registry_root_paths)
    except registry.RegistryError as exc:
        if exc.field == "model":
            exc.field = "model_id"
        return _error(exc)
    return DictionarySetOut(**asdict(reg))


@router.get("", response_model=RegistryOut)
async def list_registered(request: Request) -> RegistryOut:
    models, dsets = await run_in_threadpool(registry.list_registry, driver_of(request), settings_of(request).neo4j_database)
    return RegistryOut(models=[ModelOut(**asdict(m)) for m in models],
                       dictionary_sets=[DictionarySetOut(**asdict(d)) for d in dsets])
