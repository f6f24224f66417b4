"""What routes receive through FastAPI dependencies (``Annotated[..., Depends(...)]``, as in FastAPI's
full-stack template): the app's one ``Settings`` object (``create_app(settings)``; tests pass theirs the same
way), the pipeline limits it holds (``settings.pipeline``), the Neo4j driver opened at start-up and the
database to name, one Redis client per app, and tokenizers of registered models (cached by content hash) for
prompt-length checks.

A route declares what it needs by type::

    def get_thing(thing_id: str, driver: DriverDep, db: DatabaseDep) -> ThingOut: ...

A test changes one of them with ``app.dependency_overrides[pipeline_settings] = lambda: PipelineSettings(...)``.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import neo4j
import redis
from fastapi import Depends, FastAPI, HTTPException, Request

from workers.connections.redis import redis_client
from workers.settings import PipelineSettings, Settings

_lock = threading.Lock()


def app_settings(request: Request) -> Settings:
    """The settings ``create_app`` was given."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


def pipeline_settings(settings: SettingsDep) -> PipelineSettings:
    """Pipeline limits (corpus size, prompt length, upload bytes): part of the app's settings."""
    return settings.pipeline


PipelineDep = Annotated[PipelineSettings, Depends(pipeline_settings)]


def database(settings: SettingsDep) -> str | None:
    """The Neo4j database every query names (``ATLAS_NEO4J_DATABASE``)."""
    return settings.neo4j_database


DatabaseDep = Annotated["str | None", Depends(database)]


def neo4j_driver(request: Request) -> neo4j.Driver:
    """The driver opened at start-up; 503 when there is none (no password, see /healthz)."""
    driver = getattr(request.app.state, "neo4j_driver", None)
    if driver is None:
        raise HTTPException(503, getattr(request.app.state, "neo4j_driver_error", None) or "Neo4j is not available")
    return driver


DriverDep = Annotated[neo4j.Driver, Depends(neo4j_driver)]


def redis_of(request: Request | FastAPI) -> redis.Redis:
    """The app's one Redis client (made on first use, from ``workers.connections.redis``)."""
    state: Any = (request.app if isinstance(request, Request) else request).state
    with _lock:
        client = getattr(state, "redis_client", None)
        if client is None:
            client = state.redis_client = redis_client(state.settings)
    return client


def _redis(request: Request) -> redis.Redis:
    return redis_of(request)


RedisDep = Annotated[redis.Redis, Depends(_redis)]


def tokenizer_for(request: Request, model) -> object:  # noqa: ANN001 - RegisteredModel
    from workers.pipeline.compute import load_tokenizer

    state: Any = request.app.state
    with _lock:
        cache = getattr(state, "tokenizers", None)
        if cache is None:
            cache = state.tokenizers = {}
        key = (model.model_id, model.content_hash)
        if key not in cache:
            cache[key] = load_tokenizer(model)
        return cache[key]
