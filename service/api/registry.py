"""Register models and dictionary sets by path (content-hashed in Neo4j); list them. Registering needs an API
key with the ``write`` scope and a path under ``ATLAS_REGISTRY_ROOTS`` (403 naming the roots otherwise) holding
no pickled weights (422); listing is public."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, DriverDep, SettingsDep
from service.auth import ApiKey, key_responses, require_scope
from service.schemas.registry import (
    DictionarySetOut,
    DictionarySetRegistration,
    ModelOut,
    ModelRegistration,
    RegistryOut,
)
from workers.pipeline import registry

router = APIRouter(prefix="/registry", tags=["registry"])
_REGISTRATION_RESPONSES = key_responses("write", {422: {}}, also_forbidden="the path is outside ATLAS_REGISTRY_ROOTS")


@router.post("/models", response_model=ModelOut, status_code=201,
             responses=_REGISTRATION_RESPONSES)
async def register_model(body: ModelRegistration, key: Annotated[ApiKey, Depends(require_scope("write"))],
                         driver: DriverDep, db: DatabaseDep, settings: SettingsDep) -> ModelOut:
    """Register (or re-register after its files changed) a model under ``model_id``."""
    reg = await run_in_threadpool(registry.register_model, driver, body.model_id, body.path, db,
                                  roots=settings.registry_root_paths)
    return ModelOut(**asdict(reg))


@router.post("/dictionary-sets", response_model=DictionarySetOut, status_code=201,
             responses=_REGISTRATION_RESPONSES)
async def register_dictionary_set(body: DictionarySetRegistration,
                                  key: Annotated[ApiKey, Depends(require_scope("write"))], driver: DriverDep,
                                  db: DatabaseDep, settings: SettingsDep) -> DictionarySetOut:
    """Register a dictionary set directory for a registered model."""
    reg = await run_in_threadpool(registry.register_dictionary_set, driver, body.dictionary_set_id, body.path,
                                  body.model_id, db, roots=settings.registry_root_paths)
    return DictionarySetOut(**asdict(reg))


@router.get("", response_model=RegistryOut)
async def list_registered(driver: DriverDep, db: DatabaseDep) -> RegistryOut:
    models, dsets = await run_in_threadpool(registry.list_registry, driver, db)
    return RegistryOut(models=[ModelOut(**asdict(m)) for m in models],
                       dictionary_sets=[DictionarySetOut(**asdict(d)) for d in dsets])
