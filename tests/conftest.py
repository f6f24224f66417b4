"""Session fixtures: the real Neo4j and Redis the tests talk to, started by the project's own code.

`scripts/dev test` exports the test settings (own state directory and ports) and starts the services
before pytest; running pytest directly gets the same defaults from here and starts (then stops) the
services itself. A service that cannot start fails the tests that need it: never a skip.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Before anything reads the (cached) settings: tests never touch a developer's demo services.
os.environ.setdefault("ATLAS_STATE_DIR", str(REPO_ROOT / ".state" / "test"))
os.environ.setdefault("ATLAS_NEO4J_URI", "bolt://127.0.0.1:17687")
os.environ.setdefault("ATLAS_REDIS_URL", "redis://127.0.0.1:16379/0")
os.environ.setdefault("ATLAS_NEO4J_PASSWORD", "atlas-test-password")
os.environ.setdefault("ATLAS_NEO4J_HEAP", "768m")
os.environ.setdefault("ATLAS_NEO4J_PAGECACHE", "256m")
# Registration over HTTP is limited to ATLAS_REGISTRY_ROOTS: the tests register from pytest's temporary
# directories and the zoo.
os.environ.setdefault("ATLAS_REGISTRY_ROOTS", os.pathsep.join([
    tempfile.gettempdir(), str(Path(os.environ.get("ATLAS_CACHE_DIR", Path.home() / ".cache" / "circuit-atlas")) / "zoo")]))


@pytest.fixture(scope="session")
def settings():  # noqa: ANN201 - workers.settings.Settings
    from workers.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def services(settings) -> Iterator[object]:  # noqa: ANN001
    """Neo4j and Redis up for the whole session (a no-op when `scripts/dev test` already started them)."""
    from service.runtime import services as runtime
    from service.runtime.processes import ServiceError

    try:
        status = runtime.up(settings, print)
    except ServiceError as exc:
        pytest.fail(f"the test services could not start: {exc}", pytrace=False)
    yield status
    # Only what this session started is stopped; services started by scripts/dev are its to stop.
    if status.neo4j.started_now:
        from service.runtime import neo4j as neo4j_runtime

        neo4j_runtime.stop(settings)
    if status.redis.started_now:
        from service.runtime import redis as redis_runtime

        redis_runtime.stop(settings)


@pytest.fixture(scope="session")
def neo4j_driver(settings, services) -> Iterator[object]:  # noqa: ANN001
    """A driver on the test server whose schema is migrated."""
    from service.db.migrations import migrate
    from workers.connections.neo4j import neo4j_driver as make_driver

    with make_driver(settings) as driver:
        migrate(driver, settings.neo4j_database)
        yield driver


@pytest.fixture(scope="session")
def redis_client(settings, services) -> Iterator[object]:  # noqa: ANN001
    from workers.connections.redis import redis_client as make_client

    client = make_client(settings)
    yield client
    client.close()


@pytest.fixture(scope="session")
def write_key(redis_client) -> Iterator[tuple[object, str]]:  # noqa: ANN001
    """(ApiKey, plaintext) of a real 'write' key: the key tests submit, cancel and
    request analyses with."""
    from service.auth import create_key, delete_key

    key, plain = create_key(redis_client, "tests-write", ("write",))
    yield key, plain
    delete_key(redis_client, key.key_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def api_url(settings, services) -> Iterator[str]:  # noqa: ANN001
    """Base URL of the real FastAPI app served by uvicorn (a thread of this process) on a free port."""
    import uvicorn

    from service.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start the API for the tests (see its log above)", pytrace=False)
        time.sleep(0.05)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def gemma():  # noqa: ANN201 - (Gemma3ForCausalLM, tokenizer)
    """Gemma 3 270M (fp32) and its tokenizer, loaded once per session (about a minute; slow tests only).
    Shared: no test modifies it."""
    import torch

    from workers.models.gguf import load_gemma3_270m

    torch.set_num_threads(1)
    return load_gemma3_270m()


@pytest.fixture
def unique_id() -> str:
    """A fresh id for data a test writes, so tests sharing the database never see each other's rows."""
    return f"t{uuid.uuid4().hex[:12]}"
