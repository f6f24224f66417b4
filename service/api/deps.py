"""Shared per-app resources for the routes: the Neo4j driver opened at start-up, one Redis client, and
tokenizers of registered models (cached by content hash) for prompt-length checks."""

from __future__ import annotations

import threading
from typing import Any

import neo4j
import redis
from fastapi import FastAPI, HTTPException, Request

from workers.connections.redis import redis_client
from workers.pipeline.config import PipelineSettings, get_pipeline_settings
from workers.settings import Settings

_lock = threading.Lock()


def driver_of(request: Request) -> neo4j.Driver:
    driver = getattr(request.app.state, "neo4j_driver", None)
    if driver is None:
        raise HTTPException(503, getattr(request.app.state, "neo4j_driver_error", None) or "Neo4j is not available")
    return driver


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def pipeline_settings_of(request: Request) -> PipelineSettings:
    return getattr(request.app.state, "pipeline_settings", None) or get_pipeline_settings()


def redis_of(request: Request | FastAPI) -> redis.Redis:
    state: Any = (request.app if isinstance(request, Request) else request).state
    with _lock:
        client = getattr(state, "redis_client", None)
        if client is None:
            client = state.redis_client = redis_client(state.settings)
    return client


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
