from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.schemas.corpora import CorpusJobOut
from service.schemas.pages import Page


class PromptFailure(BaseModel):
    prompt_id: str
    index: int
    error: str | None
    attempts: int | None = None


class JobStatus(BaseModel):
    job_id: str
    corpus_id: str
    state: str  # submitting, queued, running, complete, complete_with_failures, cancelling, cancelled
    total: int
    done: int
    failed: int
    cancelled: int
    running: int
    queued: int
    throughput_per_min: float | None
    eta_s: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    model: str
    dictionary_set: str
    settings: dict[str, Any]
    duplicates: list[dict[str, int]]
    failures: list[PromptFailure]


class JobSummaryOut(CorpusJobOut):
    """One job of the listing: its state and prompt counters, and the corpus it belongs to."""

    corpus_id: str
    corpus_name: str | None = None
    model: str | None = None
    dictionary_set: str | None = None


class JobPageOut(Page[JobSummaryOut]):
    pass


class TimelineBinOut(BaseModel):
    t0: float = Field(description="Start of the interval (epoch seconds).")
    done: int
    failed: int
    per_min: float = Field(description="(done + failed) per minute in the interval.")


class JobTimelineOut(BaseModel):
    job_id: str
    start: float | None = Field(description="The job's start (its first prompt started); null before that.")
    end: float | None = Field(description="Its end, or now while it runs.")
    bin_s: float | None = Field(description="Seconds per interval.")
    bins: list[TimelineBinOut]
