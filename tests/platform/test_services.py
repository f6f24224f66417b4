"""The real services `atlas services up` starts, and its behaviour on bad input and faults."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from service.runtime import neo4j as neo4j_runtime
from service.runtime import redis as redis_runtime
from service.runtime import services as runtime
from service.runtime.processes import ServiceError, owned_process


def _listening_dummy() -> socket.socket:
    """A socket bound and listening on a free loopback port that answers nothing (a squatter)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_neo4j_is_526_community(neo4j_driver, settings):
    records, _, _ = neo4j_driver.execute_query("CALL dbms.components()", database_=settings.neo4j_database)
    (component,) = records
    assert component["name"] == "Neo4j Kernel"
    assert component["edition"] == "community"
    assert re.fullmatch(r"5\.26\.\d+", component["versions"][0])
    assert component["versions"][0] == settings.neo4j_version


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_redis_is_durable_and_never_evicts(redis_client, services):
    assert redis_client.ping()
    if services.redis.owned_pid is not None:  # settings of a Redis someone else runs are theirs
        config = {
            _text(k): _text(v)
            for key in ("appendonly", "maxmemory-policy", "bind")
            for k, v in redis_client.config_get(key).items()
        }
        assert config["appendonly"] == "yes"
        assert config["maxmemory-policy"] == "noeviction"
        assert config["bind"].split() == ["127.0.0.1"]


def test_up_twice_is_a_no_op(settings, services):
    before = runtime.status(settings)
    again = runtime.up(settings)
    assert not again.neo4j.started_now and not again.redis.started_now
    assert again.neo4j.pid == before.neo4j.pid and before.neo4j.pid is not None
    assert again.redis.owned_pid == before.redis.owned_pid


def test_password_file_is_private(settings, services):
    from workers.connections.neo4j import generated_password_file

    path = generated_password_file(settings)
    assert path.exists()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == settings.neo4j_password


def test_neo4j_port_taken_is_named_and_nothing_starts(settings, tmp_path):
    squatter = _listening_dummy()
    port = squatter.getsockname()[1]
    try:
        bad = settings.model_copy(update={"state_dir": tmp_path, "neo4j_uri": f"bolt://127.0.0.1:{port}"})
        with pytest.raises(ServiceError, match=rf"port {port} \(Bolt\) is already in use.*ATLAS_NEO4J_URI"):
            neo4j_runtime.start(bad)
        assert not neo4j_runtime.Neo4jPaths.from_settings(bad).pid_file.exists()
    finally:
        squatter.close()


def test_redis_port_taken_by_non_redis_is_named(settings, tmp_path):
    squatter = _listening_dummy()
    port = squatter.getsockname()[1]
    try:
        bad = settings.model_copy(update={"state_dir": tmp_path, "redis_url": f"redis://127.0.0.1:{port}/0"})
        with pytest.raises(ServiceError, match=rf"port {port} is in use by a process that does not answer"):
            redis_runtime.start(bad)
        assert not redis_runtime.RedisPaths.from_settings(bad).pid_file.exists()
    finally:
        squatter.close()


def test_java_missing_is_named_with_the_fix(settings, tmp_path, monkeypatch):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # no java on PATH either
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free_port = probe.getsockname()[1]
    probe.close()
    bad = settings.model_copy(update={
        "state_dir": tmp_path / "state", "java_home": tmp_path / "no-jdk",
        "neo4j_uri": f"bolt://127.0.0.1:{free_port}",
    })
    with pytest.raises(ServiceError, match=r"Java 17 is needed.*apt-get install -y openjdk-17-jre-headless"):
        neo4j_runtime.start(bad)
    assert not neo4j_runtime.Neo4jPaths.from_settings(bad).pid_file.exists()


def test_maven_failure_is_named_and_leaves_no_partial_lib(settings, tmp_path):
    bad = settings.model_copy(update={"cache_dir": tmp_path, "neo4j_version": "5.26.9999"})
    with pytest.raises(ServiceError, match=r"Maven could not fetch Neo4j 5\.26\.9999.*Maven Central reachable"):
        neo4j_runtime.fetch_jars(bad)
    version_dir = tmp_path / "neo4j" / "5.26.9999"
    assert not (version_dir / "lib").exists()
    assert not list(version_dir.glob("lib.partial-*"))


def test_stale_and_foreign_pid_files_are_never_signalled(tmp_path):
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("not a pid\n")  # corrupt
    assert owned_process(pid_file, "--home-dir=/nowhere") is None
    assert not pid_file.exists()
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but it is this pytest, not our server
    assert owned_process(pid_file, f"--home-dir={tmp_path}") is None
    assert not pid_file.exists()


def test_down_with_nothing_of_ours_running_stops_nothing(settings, tmp_path):
    other = settings.model_copy(update={"state_dir": tmp_path})
    run = tmp_path / "neo4j" / "run"
    run.mkdir(parents=True)
    (run / "atlas-neo4j.pid").write_text(f"{os.getpid()}\n")
    assert runtime.down(other) == []
    assert Path(f"/proc/{os.getpid()}").exists()


def test_neo4j_password_mismatch_is_refused_before_start(settings, services):
    wrong = settings.model_copy(update={"neo4j_password": "some-other-password"})
    paths = neo4j_runtime.Neo4jPaths.from_settings(wrong)
    java = neo4j_runtime.find_java(wrong)
    with pytest.raises(ServiceError, match="differs from the password"):
        neo4j_runtime.ensure_initial_password(wrong, paths, java)


def test_damaged_state_directory_is_named_and_nothing_starts(settings, tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free_port = probe.getsockname()[1]
    probe.close()
    bad = settings.model_copy(update={"state_dir": tmp_path, "neo4j_uri": f"bolt://127.0.0.1:{free_port}"})
    home = tmp_path / "neo4j"
    home.mkdir()
    (home / "data").write_text("a file where the data directory should be")
    with pytest.raises(ServiceError, match=r"state directory .* is damaged.*mv "):
        neo4j_runtime.start(bad)
    assert not neo4j_runtime.Neo4jPaths.from_settings(bad).pid_file.exists()


def test_a_redis_already_answering_is_used_and_never_stopped(settings, tmp_path):
    import shutil
    import subprocess
    import time

    import redis

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    foreign = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        other = settings.model_copy(update={"state_dir": tmp_path / "state", "redis_url": f"redis://127.0.0.1:{port}/0"})
        status = redis_runtime.start(other)
        assert status.reachable and status.owned_pid is None and not status.started_now
        assert redis_runtime.stop(other) is False
        assert client.ping() and foreign.poll() is None
    finally:
        foreign.terminate()
        foreign.wait(timeout=10)


def test_failed_up_leaves_nothing_half_started(settings, tmp_path):
    """Redis is started first; when Neo4j then cannot start, that Redis is stopped again."""
    squatter = _listening_dummy()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    redis_port = probe.getsockname()[1]
    probe.close()
    bad = settings.model_copy(update={
        "state_dir": tmp_path,
        "neo4j_uri": f"bolt://127.0.0.1:{squatter.getsockname()[1]}",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
    })
    try:
        with pytest.raises(ServiceError, match="already in use"):
            runtime.up(bad)
        assert redis_runtime.ping(bad) is None
        assert not redis_runtime.RedisPaths.from_settings(bad).pid_file.exists()
    finally:
        squatter.close()


def test_transaction_memory_limits_follow_the_heap_or_the_settings(settings):
    assert [neo4j_runtime.byte_size(t) for t in ("768m", "1g", "1G", "512k", "1048576", "2gb")] == \
        [768 * 2 ** 20, 2 ** 30, 2 ** 30, 512 * 2 ** 10, 2 ** 20, 2 * 2 ** 30]
    with pytest.raises(ServiceError, match="not a size"):
        neo4j_runtime.byte_size("lots")
    heap = settings.model_copy(update={"neo4j_heap": "1g", "neo4j_tx_memory_max": "", "neo4j_tx_memory_total_max": ""})
    assert neo4j_runtime.transaction_memory(heap) == (2 ** 30 // 4, 2 ** 30 * 7 // 10)
    given = heap.model_copy(update={"neo4j_tx_memory_max": "100m", "neo4j_tx_memory_total_max": "600m"})
    assert neo4j_runtime.transaction_memory(given) == (100 * 2 ** 20, 600 * 2 ** 20)
    conf = neo4j_runtime.render_conf(given, neo4j_runtime.Neo4jPaths.from_settings(given))
    assert f"db.memory.transaction.max={100 * 2 ** 20}\n" in conf
    assert f"db.memory.transaction.total.max={600 * 2 ** 20}\n" in conf
    with pytest.raises(ServiceError, match="at most"):
        neo4j_runtime.transaction_memory(given.model_copy(update={"neo4j_tx_memory_max": "1g"}))
