"""Handles on work the API runs in the background: a corpus job (`Job`) and an analysis (`Analysis`).

Both poll their GET route; ``Job.wait`` draws a tqdm bar of finished prompts (done + failed + cancelled of
total) with the job's state, failures and prompts/min beside it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from atlas_client.api import Atlas

# The API's final states (the client does not import the server: tests/client checks these equal
# workers.pipeline.jobs.FINAL_JOB_STATES and the analysis statuses of service.schemas.analyses).
FINAL_JOB_STATES = ("complete", "complete_with_failures", "cancelled")
FINAL_ANALYSIS_STATES = ("done", "failed")


class JobTimeout(TimeoutError):
    """``wait`` gave up; the job goes on in the service."""


class Job:
    """A corpus job: ``status()`` reads it, ``wait()`` follows it to the end, ``graph_ids()`` lists its graphs."""

    def __init__(self, atlas: Atlas, job_id: str, corpus_id: str, accepted: dict[str, Any] | None = None) -> None:
        self.atlas = atlas
        self.job_id = job_id
        self.corpus_id = corpus_id
        self.accepted = accepted or {}  # POST /corpora's answer (n_prompts, duplicates), when this client made it
        self.last_status: dict[str, Any] | None = None

    def __repr__(self) -> str:
        state = self.last_status["state"] if self.last_status else "?"
        return f"Job({self.job_id!r}, corpus {self.corpus_id!r}, {state})"

    def status(self) -> dict[str, Any]:
        """GET /jobs/{id}: state, done/failed/cancelled/total, prompts/min, ETA, failures with reasons."""
        self.last_status = self.atlas.get(f"/jobs/{quote(self.job_id, safe='')}")
        return self.last_status

    def wait(self, *, progress: bool = True, poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job is complete, complete with failures, or cancelled; returns its last status.
        ``progress`` draws a bar (notebook widget or terminal); ``timeout_s`` raises JobTimeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        status = self.status()
        bar = tqdm(total=status["total"], unit="prompt", desc=self.job_id, disable=not progress, dynamic_ncols=True)
        try:
            while True:
                bar.n = status["done"] + status["failed"] + status["cancelled"]
                rate = status["throughput_per_min"]
                bar.set_postfix_str(f"{status['state']}, {status['failed']} failed"
                                    + (f", {rate:.1f} prompts/min" if rate else ""), refresh=False)
                bar.refresh()
                if status["state"] in FINAL_JOB_STATES:
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise JobTimeout(f"job {self.job_id} is still {status['state']} after {timeout_s}s "
                                     f"({bar.n}/{status['total']} prompts finished)")
                time.sleep(poll_s)
                status = self.status()
        finally:
            bar.close()

    def cancel(self) -> dict[str, Any]:
        """DELETE /jobs/{id} (needs the write key that submitted the corpus)."""
        self.last_status = self.atlas.request("DELETE", f"/jobs/{quote(self.job_id, safe='')}")
        return self.last_status

    def graph_ids(self) -> list[str]:
        """The ids of the corpus' complete graphs."""
        return list(self.atlas.graphs(corpus_id=self.corpus_id)["graph_id"])


class Analysis:
    """A queued analysis; ``wait()`` polls GET /analyses/{id} and raises AtlasError if it failed."""

    def __init__(self, atlas: Atlas, analysis_id: str, state: dict[str, Any]) -> None:
        self.atlas = atlas
        self.analysis_id = analysis_id
        self.state = state

    def __repr__(self) -> str:
        return f"Analysis({self.analysis_id!r}, {self.state.get('kind')}, {self.state.get('status')})"

    @property
    def result(self) -> dict[str, Any] | None:
        return self.state.get("result")

    def refresh(self) -> dict[str, Any]:
        self.state = self.atlas.get(f"/analyses/{quote(self.analysis_id, safe='')}")
        return self.state

    def wait(self, *, poll_s: float = 0.5, timeout_s: float | None = 600) -> Analysis:
        from atlas_client.api import AtlasError

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state["status"] not in FINAL_ANALYSIS_STATES:
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"analysis {self.analysis_id} is still {self.state['status']} after {timeout_s}s")
            time.sleep(poll_s)
            self.refresh()
        if self.state["status"] == "failed":
            raise AtlasError(200, "GET", f"/analyses/{self.analysis_id}",
                             f"analysis {self.analysis_id} ({self.state['kind']}) failed: {self.state.get('error')}")
        return self
