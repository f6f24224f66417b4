"""A tiny random GPT-2 (zoo tokenizer) with random dictionaries on disk, registered in the real Neo4j;
the app in-process (TestClient, real ASGI stack over real Neo4j/Redis); real worker subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.demo import stop_worker_process
from workers.pipeline.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def registered(neo4j_driver, tiny_model, unique_id, settings) -> tuple[str, str]:  # noqa: ANN001
    """(model_id, dictionary_set_id) of the tiny model, registered under fresh names."""
    from workers.pipeline.registry import register_dictionary_set, register_model

    model_dir, dict_dir = tiny_model
    register_model(neo4j_driver, f"{unique_id}-m", model_dir, settings.neo4j_database)
    register_dictionary_set(neo4j_driver, f"{unique_id}-d", dict_dir, f"{unique_id}-m", settings.neo4j_database)
    return f"{unique_id}-m", f"{unique_id}-d"


@pytest.fixture(scope="session")
def client(settings, neo4j_driver, write_key) -> Iterator[object]:  # noqa: ANN001
    """The app in-process; every request carries ``write_key`` unless a test removes or overrides the header."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {write_key[1]}"}) as c:
        yield c


def start_worker(name: str, extra_env: dict[str, str] | None = None, queues: str = "gpu,cpu") -> subprocess.Popen:
    argv = [sys.executable, "-m", "service.cli", "worker", "--queues", queues, "--concurrency", "1",
            "--name", name, "--loglevel", "warning"]
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    stop_worker_process(proc, timeout_s)


@pytest.fixture
def worker_factory(unique_id) -> Iterator[Callable[..., subprocess.Popen]]:  # noqa: ANN001
    procs: list[subprocess.Popen] = []

    def make(extra_env: dict[str, str] | None = None, queues: str = "gpu,cpu") -> subprocess.Popen:
        procs.append(start_worker(f"{unique_id}-{len(procs)}", extra_env, queues))
        return procs[-1]

    yield make
    for p in procs:
        stop_worker(p)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)
