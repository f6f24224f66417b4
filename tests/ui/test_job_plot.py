"""The job page's plot in real headless Chromium: one bar per interval of GET /jobs/{id}/timeline, its height the
prompts per minute and its red share the failures, for a job played through the pipeline's own state functions."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.query.test_job_timeline import timed_job  # noqa: F401 - a finished job with known times
from tests.ui.test_viewer import wait_js

pytestmark = pytest.mark.usefixtures("services")


def test_job_page_plots_throughput_and_failures(browser, api_url, api, timed_job, artifacts_dir) -> None:  # noqa: ANN001, F811
    created, _, _ = timed_job
    tl = api.get(f"/jobs/{created.job_id}/timeline", params={"bins": 30}).json()
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/job/{quote(created.job_id)}")
    bars = wait_js(browser, """const g = [...document.querySelectorAll('#job-timeline svg.timeline g.tbin')];
        return g.length && g.map(b => ({done: +b.dataset.done, failed: +b.dataset.failed, per: +b.dataset.perMin,
            h: +b.querySelector('rect.done').getAttribute('height') + +b.querySelector('rect.failed').getAttribute('height'),
            red: +b.querySelector('rect.failed').getAttribute('height')}));""", what="the job plot")
    assert [(b["done"], b["failed"], b["per"]) for b in bars] == [(b["done"], b["failed"], b["per_min"]) for b in tl["bins"]]
    tallest = max(b["h"] for b in bars)
    top = max(b["per_min"] for b in tl["bins"])
    for b in bars:
        assert b["h"] == pytest.approx(tallest * b["per"] / top, abs=0.02)
        total = b["done"] + b["failed"]
        assert b["red"] == pytest.approx(b["h"] * b["failed"] / total if total else 0, abs=0.02)
    assert sum(b["failed"] for b in bars) == 2 and any(b["red"] > 0 for b in bars)
    browser.save_screenshot(str(artifacts_dir / "job_page.png"))
