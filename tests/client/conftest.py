"""Fixtures of the client tests: the real API over HTTP (tests/conftest.py's ``api_url``), the tiny model of
the pipeline tests registered under fresh names, real Celery worker subprocesses, and a 'cypher' key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.conftest import registered, tiny_model, worker_factory  # noqa: F401 - shared fixtures


@pytest.fixture(scope="session")
def cypher_key(redis_client) -> Iterator[str]:  # noqa: ANN001
    from service.auth import create_key, delete_key

    key, plain = create_key(redis_client, "tests-client-cypher", ("cypher",))
    yield plain
    delete_key(redis_client, key.key_id)
