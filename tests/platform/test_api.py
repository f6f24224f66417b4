"""/healthz, /readyz and OpenAPI of the real app against the real services."""

from __future__ import annotations

import importlib
import pkgutil
import re
import socket

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

import service.api
from service.app import create_app
from service.runtime import neo4j as neo4j_runtime


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_healthz_ok_with_versions_and_readyz(settings, neo4j_driver):
    with TestClient(create_app(settings)) as client:
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "ok" and body["failing"] == []
        assert re.fullmatch(r"5\.26\.\d+", body["neo4j"]["version"])
        assert body["neo4j"]["edition"] == "community"
        assert re.fullmatch(r"\d+\.\d+\.\d+", body["redis"]["version"])
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["pending"] == [] and ready.json()["applied"]


def test_openapi_and_docs_are_served(settings, services):
    with TestClient(create_app(settings, run_migrations=False)) as client:
        spec = client.get("/openapi.json").json()
        assert {"/healthz", "/readyz"} <= set(spec["paths"])
        assert client.get("/docs").status_code == 200


def _scopes_required(dependant) -> set[str]:  # noqa: ANN001 - fastapi.dependencies.models.Dependant
    names = {getattr(d.call, "__name__", "") for d in dependant.dependencies}
    found = {m.group(1) for n in names if (m := re.fullmatch(r"require_(\w+)_scope", n))}
    return found.union(*(_scopes_required(d) for d in dependant.dependencies))


def test_every_keyed_route_documents_its_401_and_403_naming_its_scope(settings):
    routers = [m.router for info in pkgutil.iter_modules(service.api.__path__)
               if hasattr(m := importlib.import_module(f"service.api.{info.name}"), "router")]
    keyed = [(route, scopes) for router in routers for route in router.routes
             if isinstance(route, APIRoute) and (scopes := _scopes_required(route.dependant))]
    assert len(keyed) >= 12  # corpora, jobs, registry (2), analyses, cypher, circuits, global, qk, interventions, labels
    spec = create_app(settings, run_migrations=False).openapi()
    for route, scopes in keyed:
        for method in route.methods:
            responses = spec["paths"][route.path_format][method.lower()]["responses"]
            assert responses["401"]["description"] == "No or invalid API key", (route.path, method)
            assert all(f"Key lacks '{s}'" in responses["403"]["description"] for s in scopes), (route.path, method)


def test_healthz_503_names_redis_when_redis_is_unreachable(settings, services):
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{_unused_port()}/0"})
    with TestClient(create_app(dead, run_migrations=False)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["redis"] and "Redis" in body["redis"]["error"]
    assert body["neo4j"]["ok"] is True


def test_healthz_503_names_neo4j_when_neo4j_is_stopped_then_recovers(settings, neo4j_driver):
    """Really stops the test server (about 10 s) and starts it again (about 12 s)."""
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert neo4j_runtime.stop(settings)
        try:
            response = client.get("/healthz")
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["failing"] == ["neo4j"]
            assert "Neo4j" in body["neo4j"]["error"] and body["redis"]["ok"] is True
            assert client.get("/readyz").status_code == 503
        finally:
            neo4j_runtime.start(settings)
        assert client.get("/healthz").status_code == 200


def test_create_app_uses_the_pipeline_limits_of_its_settings(settings, services, write_key):
    """One settings object: the app's routes get ``settings.pipeline`` (not a global) through their dependencies."""
    small = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"max_upload_bytes": 100})})
    with TestClient(create_app(small, run_migrations=False),
                    headers={"Authorization": f"Bearer {write_key[1]}"}) as client:
        response = client.post("/corpora", json={"model": "m", "dictionary_set": "d", "prompts": ["x" * 200]})
    assert response.status_code == 413, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body"] and "the limit is 100 (ATLAS_PIPELINE_MAX_UPLOAD_BYTES)" in detail["msg"]
