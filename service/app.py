"""The FastAPI application. ``uvicorn service.app:app`` (or `atlas api`) serves it.

Start-up (lifespan) opens the one Neo4j driver of the process and applies pending migrations. If Neo4j
is unreachable at that moment the app still starts, so that /healthz can say so (503 naming Neo4j)
and /readyz reports the schema as not ready; nothing is half-applied because migrations hold a lock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import neo4j
from fastapi import FastAPI

from service.api import (
    analyses,
    circuits,
    corpora,
    cypher,
    errors,
    features,
    global_circuits,
    health,
    interventions,
    jobs,
    qk,
    registry,
)
from service.api.limits import BodyLimit
from service.db.migrations import MigrationError, migrate
from service.ui import router as ui_router
from workers.connections.neo4j import Neo4jPasswordMissing, neo4j_driver
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _move_keys_out_of_neo4j(app: FastAPI) -> None:
    """API keys of older versions lived in Neo4j, where user Cypher can read them: move them to Redis."""
    import redis

    from service.api.deps import redis_of
    from service.auth import move_keys_out_of_neo4j

    settings = app.state.settings
    try:
        moved = move_keys_out_of_neo4j(app.state.neo4j_driver, redis_of(app), database=settings.neo4j_database)
    except (redis.exceptions.RedisError, neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
        log.error("API keys stored in Neo4j were not moved to Redis at start-up: %s", exc)
        return
    if moved:
        log.warning("moved %d API key(s) from Neo4j to Redis", moved)


def create_app(settings: Settings | None = None, *, run_migrations: bool = True) -> FastAPI:
    """The app, configured by ``settings`` alone (``get_settings()`` when omitted): routes receive it, and the
    pipeline limits it holds (``settings.pipeline``), through ``service/api/deps.py``."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.neo4j_driver = None
        app.state.neo4j_driver_error = None
        app.state.migration_error = None
        try:
            # Short timeouts: a health probe must answer "down" quickly rather than hang on a dead server.
            app.state.neo4j_driver = neo4j_driver(settings, connection_timeout_s=5, acquisition_timeout_s=10)
        except Neo4jPasswordMissing as exc:
            app.state.neo4j_driver_error = str(exc)
            log.error("%s", exc)
        if run_migrations and app.state.neo4j_driver is not None:
            try:
                report = migrate(app.state.neo4j_driver, settings.neo4j_database)
                log.info("migrations: applied %s, already applied %s", report.applied, report.already_applied)
            except (MigrationError, neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
                app.state.migration_error = str(exc)
                log.error("migrations not applied at start-up: %s", exc)
            _move_keys_out_of_neo4j(app)
        try:
            yield
        finally:
            if app.state.neo4j_driver is not None:
                app.state.neo4j_driver.close()

    app = FastAPI(
        title="Circuit Atlas",
        summary="Exact feature-level circuits of transformer LMs, stored in Neo4j.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(BodyLimit, limit_of=lambda scope: None if scope["path"] == "/corpora" else (
        settings.api_max_body_bytes, "ATLAS_API_MAX_BODY_BYTES"))
    app.include_router(health.router)
    for module in (registry, corpora, jobs):  # the corpus pipeline (issue #5)
        app.include_router(module.router)
    for module in (circuits, qk, features, global_circuits, analyses, cypher):  # the query API (issue #6)
        app.include_router(module.router)
    app.include_router(interventions.router)  # interventions on a stored graph's prompt (issue #20)
    app.include_router(ui_router)  # the circuit viewer at /ui (issue #7)
    return app


app = create_app()
