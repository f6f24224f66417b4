"""Liveness of the backing services (/healthz) and readiness of the schema (/readyz).

The checks are plain functions (the CLI's demo and the tests call them directly); the routes only
turn their result into a status code.
"""

from __future__ import annotations

from typing import Any

import neo4j
import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.db.migrations import MIGRATIONS_DIR, migration_state
from workers.connections.redis import redis_client
from workers.settings import Settings

router = APIRouter(tags=["health"])


class ServiceCheck(BaseModel):
    ok: bool
    version: str | None = None
    edition: str | None = None
    error: str | None = None


class Health(BaseModel):
    status: str  # "ok" or "unavailable"
    failing: list[str]  # names of the services that failed their check, e.g. ["neo4j"]
    neo4j: ServiceCheck
    redis: ServiceCheck


class Readiness(BaseModel):
    ready: bool
    applied: list[int] = []
    pending: list[int] = []
    changed: list[int] = []
    missing: list[int] = []
    error: str | None = None


def check_neo4j(driver: neo4j.Driver | None, settings: Settings, driver_error: str | None = None) -> ServiceCheck:
    if driver is None:
        return ServiceCheck(ok=False, error=driver_error or "no Neo4j driver")
    try:
        # A plain session.run, not execute_query: no retry loop, so a dead server fails in milliseconds.
        with driver.session(database=settings.neo4j_database) as session:
            record = session.run(
                "CALL dbms.components() YIELD name, versions, edition RETURN versions[0] AS version, edition"
            ).single(strict=True)
        return ServiceCheck(ok=True, version=record["version"], edition=record["edition"])
    except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
        return ServiceCheck(ok=False, error=f"Neo4j at {settings.neo4j_uri} is not reachable: {exc}")


def check_redis(settings: Settings) -> ServiceCheck:
    client = redis_client(settings, timeout_s=2.0)
    try:
        info = client.info("server")
        return ServiceCheck(ok=True, version=str(info.get("redis_version")))
    except (redis.exceptions.RedisError, OSError) as exc:
        return ServiceCheck(ok=False, error=f"Redis at {settings.redis_url} is not reachable: {exc}")
    finally:
        client.close()


def check_health(driver: neo4j.Driver | None, settings: Settings, driver_error: str | None = None) -> Health:
    checks = {"neo4j": check_neo4j(driver, settings, driver_error), "redis": check_redis(settings)}
    failing = [name for name, check in checks.items() if not check.ok]
    return Health(status="unavailable" if failing else "ok", failing=failing, **checks)


def check_readiness(driver: neo4j.Driver | None, settings: Settings) -> Readiness:
    if driver is None:
        return Readiness(ready=False, error="no Neo4j driver (see /healthz)")
    # Fail fast when Neo4j is down: the records query below retries for up to 30 s otherwise.
    neo4j_check = check_neo4j(driver, settings)
    if not neo4j_check.ok:
        return Readiness(ready=False, error=neo4j_check.error)
    try:
        state = migration_state(driver, settings.neo4j_database, MIGRATIONS_DIR)
    except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
        return Readiness(ready=False, error=f"cannot read the migration records: {exc}")
    return Readiness(ready=state.up_to_date, applied=state.applied, pending=state.pending, changed=state.changed,
                     missing=state.missing)


def _state(request: Request) -> tuple[neo4j.Driver | None, Settings, str | None]:
    app_state: Any = request.app.state
    return app_state.neo4j_driver, app_state.settings, app_state.neo4j_driver_error


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(request: Request) -> JSONResponse:
    """200 when Neo4j and Redis both answer (with their versions); 503 naming the failing ones."""
    driver, settings, driver_error = _state(request)
    health = check_health(driver, settings, driver_error)
    return JSONResponse(health.model_dump(), status_code=200 if not health.failing else 503)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request) -> JSONResponse:
    """200 when every migration file is applied unchanged; 503 listing what is pending or changed."""
    driver, settings, _ = _state(request)
    readiness = check_readiness(driver, settings)
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)

