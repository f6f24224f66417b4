"""The /cypher concurrency cap holds across API processes: two real uvicorn processes, one Redis, cap 1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.auth import create_key, delete_key
from service.query.user_cypher import CypherLimits, CypherRunner

SLOW = "UNWIND range(1, 1000000000) AS x WITH x WHERE x % 7 = 100 RETURN count(x)"  # runs into the timeout
LEASES = "atlas:cypher:leases"  # the API's key (SharedSlots default)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_api(port: int) -> subprocess.Popen:
    env = {**os.environ, "ATLAS_CYPHER_MAX_CONCURRENT": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def two_apis(neo4j_driver) -> Iterator[list[str]]:  # noqa: ANN001
    ports = [_free_port(), _free_port()]
    procs = [_start_api(p) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 60
        for url, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, f"the API process on {url} exited with {proc.returncode}"
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"the API on {url} did not answer /healthz within 60 s"
                time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def cypher_key(redis_client) -> Iterator[str]:  # noqa: ANN001
    key, plain = create_key(redis_client, "test-cypher-processes", ("cypher",))
    yield plain
    delete_key(redis_client, key.key_id)


def test_a_second_process_is_refused_while_the_first_holds_the_only_slot(two_apis, cypher_key, redis_client):
    a, b = two_apis
    headers = {"Authorization": f"Bearer {cypher_key}"}
    deadline = time.monotonic() + 20  # leases of earlier tests on this Redis end on their own
    while redis_client.zcard(LEASES) and time.monotonic() < deadline:
        redis_client.zremrangebyscore(LEASES, "-inf", time.time())
        time.sleep(0.2)
    assert redis_client.zcard(LEASES) == 0

    answers: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: answers.setdefault(
        "slow", httpx.post(a + "/cypher", json={"query": SLOW}, headers=headers, timeout=30)))
    slow.start()
    deadline = time.monotonic() + 10
    while redis_client.zcard(LEASES) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis_client.zcard(LEASES) == 1, "process A never took a slot"

    refused = httpx.post(b + "/cypher", json={"query": "RETURN 1 AS one"}, headers=headers, timeout=30)
    assert refused.status_code == 429
    assert refused.json()["rule"] == "concurrency-cap"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= CypherRunner.lease_s(CypherLimits())
    # Process A itself is at the cap too: the cap is one number for the whole service.
    assert httpx.post(a + "/cypher", json={"query": "RETURN 1"}, headers=headers, timeout=30).status_code == 429

    slow.join(30)
    assert answers["slow"].status_code == 408 and answers["slow"].json()["rule"] == "timeout"
    assert redis_client.zcard(LEASES) == 0  # released at once, not left to expire
    ok = httpx.post(b + "/cypher", json={"query": "RETURN 1 AS one"}, headers=headers, timeout=30)
    assert ok.status_code == 200 and ok.json()["rows"] == [[1]]
