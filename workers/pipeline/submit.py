"""Submitting a validated corpus: write Corpus/Job/Prompts in one transaction, enqueue one task per
prompt, then mark the job queued. If enqueueing fails (Redis down) the job is deleted again, so a failed
submission leaves the database as it was."""

from __future__ import annotations

from collections.abc import Callable

from neo4j import Driver

from workers.pipeline import jobs
from workers.pipeline.validation import ValidatedCorpus


class SubmissionFailed(RuntimeError):
    """The corpus could not be queued (the broker is unreachable); nothing was kept."""


def submit_corpus(driver: Driver, corpus: ValidatedCorpus, enqueue: Callable[[str, str, int], None],
                  database: str | None = None, *, owner_key_id: str | None = None) -> jobs.CreatedJob:
    """``owner_key_id``: the submitting API key's id, stored on the Corpus (see :func:`jobs.create_job`)."""
    created = jobs.create_job(driver, corpus, database, owner_key_id=owner_key_id)
    try:
        for pid in created.prompt_ids:
            enqueue(created.job_id, pid, 0)
    except Exception as exc:
        # Tasks already sent find no prompt and end (LookupError is not retried).
        jobs.delete_job(driver, created.job_id, database)
        raise SubmissionFailed(f"could not queue the corpus ({exc}); nothing was kept, retry when Redis is up") from exc
    jobs.set_job_state(driver, created.job_id, "queued", ("submitting",), database)
    return created
