"""Defaults and states shared by the engine, the pipeline, the API and the viewer."""

from __future__ import annotations

from typing import Literal, get_args

# influence pruning (circuit-tracer's defaults; workers/engine/pruning.py): keep the nodes covering this share
# of the influence, then the edges covering this share of the edge scores
NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98

# a corpus job's states (workers/pipeline/jobs.py: submitting -> queued -> running -> aggregating ->
# complete | complete_with_failures; cancelling -> cancelled)
JobState = Literal["submitting", "queued", "running", "aggregating", "complete", "complete_with_failures",
                   "cancelling", "cancelled"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
FINAL_JOB_STATES: tuple[str, ...] = ("complete", "complete_with_failures", "cancelled")
