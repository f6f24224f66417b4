"""Fixtures of the client tests: the real API over HTTP (tests/conftest.py's ``api_url``), the tiny model of
the pipeline tests registered under fresh names, real Celery worker subprocesses, and a 'cypher' key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.conftest import registered, tiny_model, worker_factory  # noqa: F401 - shared fixtures


@pytest.fixture(scope="session")
def cypher_key(neo4j_driver, settings) -> Iterator[str]:  # noqa: ANN001
    from service.auth import create_key

    key, plain = create_key(neo4j_driver, "tests-client-cypher", ("cypher",), database=settings.neo4j_database)
    yield plain
    neo4j_driver.execute_query("MATCH (k:ApiKey {key_id: $id}) DETACH DELETE k", id=key.key_id,
                               database_=settings.neo4j_database)
