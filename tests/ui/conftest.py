"""Fixtures of the viewer tests: a stored graph written by the project's writer, and Debian's headless Chromium
driven by selenium through chromedriver (the real API, uvicorn in a thread, is tests/conftest.py's ``api_url``).

Screenshots go to ``artifacts/ui/`` (gitignored) so a failing run leaves pictures to look at.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.pipeline.conftest import registered, tiny_model  # noqa: F401 - a registered tiny model + dictionaries
from tests.query.conftest import store  # noqa: F401 - graphs written with the real writer, deleted after

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts" / "ui"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,900")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stored_graph(neo4j_driver, settings):  # noqa: ANN001, ANN201 - GraphRecord
    """One engine-computed graph, written with the real writer; deleted at the end of the session."""
    import torch

    from tests.ui.graphs import build_record
    from workers.store.writer import delete_graph, write_graph

    torch.set_num_threads(1)
    rec = build_record()
    write_graph(neo4j_driver, rec, database=settings.neo4j_database)
    yield rec
    delete_graph(neo4j_driver, rec.graph_id, database=settings.neo4j_database)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian Chromium with a fresh profile (selenium.webdriver.Chrome)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.fail("Debian's chromium and chromium-driver are needed: run `scripts/dev setup` "
                    "(or apt-get install -y chromium chromium-driver)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="atlas-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def api(api_url) -> Iterator[httpx.Client]:  # noqa: ANN001
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client
