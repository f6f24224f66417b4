"""docker-compose.yml parses with the compose client and agrees with the Settings fields."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT
from workers.settings import Settings


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no compose client: install the docker compose plugin or `apt-get install docker-compose` "
                "(scripts/dev does this)", pytrace=False)


@pytest.fixture(scope="module")
def compose() -> dict:
    result = subprocess.run(
        [*_compose_command(), "-f", str(REPO_ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_services_and_images(compose):
    services = compose["services"]
    assert set(services) == {"neo4j", "redis", "api", "worker", "worker-cpu", "flower"}
    assert services["neo4j"]["image"] == "neo4j:5.26-community"
    assert services["redis"]["image"].startswith("redis:7")
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in services["worker-cpu"]
    # the GPU worker loads its models on the GPU; the CPU worker keeps the default (cpu)
    assert services["worker"]["environment"]["ATLAS_DEVICE"] == "cuda"
    assert "ATLAS_DEVICE" not in services["worker-cpu"]["environment"]


def test_atlas_environment_matches_settings(compose):
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("api", "worker", "worker-cpu"):
        env = compose["services"][name]["environment"]
        atlas_vars = {k.removeprefix("ATLAS_") for k in env if k.startswith("ATLAS_")}
        assert atlas_vars <= fields, f"{name}: unknown settings {atlas_vars - fields}"
        assert {"NEO4J_URI", "NEO4J_PASSWORD", "REDIS_URL"} <= atlas_vars
        assert env["ATLAS_NEO4J_URI"] == "bolt://neo4j:7687"
        assert env["ATLAS_REDIS_URL"].startswith("redis://redis:6379")
        # The password the app uses is the one the neo4j container is created with.
        assert compose["services"]["neo4j"]["environment"]["NEO4J_AUTH"] == f"neo4j/{env['ATLAS_NEO4J_PASSWORD']}"
