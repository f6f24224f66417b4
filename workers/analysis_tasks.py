"""Celery tasks of the query API's jobs: cross-prompt analyses and virtual weights (workers/analysis/).

``atlas.run_analysis(analysis_id)`` (cpu queue) runs one ``(:Analysis)`` node's job and stores its result
there (``workers.analysis.jobs.run_analysis``; idempotent: a done analysis is not rerun). Transient errors are
retried with the policy of ``workers/retries.py``; anything else, and a transient error that outlasts the
retries, marks the analysis failed with its cause. The kinds of analysis are listed in
``workers.analysis.jobs.ANALYSES``.
"""

from __future__ import annotations

from workers.analysis import jobs
from workers.celery_app import CPU_QUEUE, celery_app
from workers.process import process_driver
from workers.retries import TRANSIENT_ERRORS, retry_policy
from workers.settings import get_settings


@celery_app.task(name="atlas.run_analysis", bind=True, acks_late=True, queue=CPU_QUEUE,
                 **retry_policy(max_retries=5, backoff_max_s=60))
def run_analysis(self, analysis_id: str) -> str:  # noqa: ANN001 - celery Task
    db = get_settings().neo4j_database
    try:
        return jobs.run_analysis(process_driver(), analysis_id, database=db)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries >= self.max_retries:
            try:
                _fail(analysis_id, exc)
            except TRANSIENT_ERRORS:
                pass  # still down: the analysis stays 'running'
        raise  # retried by Celery (autoretry_for) while retries are left
    except Exception as exc:
        _fail(analysis_id, exc)
        raise


def _fail(analysis_id: str, exc: BaseException) -> None:
    jobs.fail_analysis(process_driver(), analysis_id, f"{type(exc).__name__}: {exc}",
                       database=get_settings().neo4j_database)
