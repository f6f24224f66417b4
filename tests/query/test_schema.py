"""schemathesis over the app's OpenAPI schema (every route, including other teams'): zero server errors.

The app runs in-process over the real Neo4j and Redis; requests carry a valid admin API key so that the
authenticated routes are exercised past their 401."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from service.auth import create_key


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:  # noqa: ANN001 - POST /corpora also takes one JSON value per line
    import json

    items = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(v) for v in items).encode()


@pytest.fixture(scope="module")
def live_app(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: driver and migrations
        yield app


def test_openapi_schema_has_examples_and_every_query_route(live_app):
    spec = live_app.openapi()
    for path in ("/graphs/{graph_id}/circuit", "/features/{fkey}", "/global/neighbours", "/cypher", "/analyses"):
        assert path in spec["paths"], path
    body = spec["components"]["schemas"]["CypherRequest"]["properties"]["query"]
    assert body.get("examples"), "POST /cypher documents an example query"


def test_every_reference_in_the_openapi_document_resolves_and_cypher_declares_non_empty(live_app):
    spec = live_app.openapi()
    refs: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(spec)
    assert len(refs) > 20
    unresolved = []
    for ref in set(refs):
        target: object = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if target is None:
            unresolved.append(ref)
    assert unresolved == []
    query = spec["components"]["schemas"]["CypherRequest"]["properties"]["query"]
    assert query["minLength"] == 1 and query["pattern"] == r"\S"


def test_no_server_errors_anywhere(live_app, redis_client):
    _, key = create_key(redis_client, "schemathesis", ("admin",))
    schema = schemathesis.openapi.from_asgi("/openapi.json", live_app)
    failures: list[str] = []
    statuses: list[tuple[str, int]] = []

    # Run each operation's Hypothesis test; collect failures across operations.
    for result in schema.get_all_operations():
        operation = result.ok()
        test = operation.as_strategy()

        @hsettings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=test)
        def run(case) -> None:  # noqa: ANN001
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            statuses.append((case.operation.path, response.status_code))
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:300]}")

        run()
    assert failures == [], "\n".join(failures)
    # the run really exercised the routes past validation and auth
    assert len(statuses) >= 100
    assert {p for p, code in statuses if code == 200} >= {"/global/neighbours", "/graphs"}
    assert {code for p, code in statuses if p == "/cypher"} >= {422}  # past auth, into the guard
