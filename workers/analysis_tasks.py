"""Celery tasks of the query API's jobs: cross-prompt analyses and virtual weights (workers/analysis/).

``atlas.run_analysis(analysis_id)`` (cpu queue) runs one ``(:Analysis)`` node's job and stores its result
there (``workers.analysis.jobs.run_analysis``; idempotent: a done analysis is not rerun). Transient Neo4j
errors are retried with backoff; anything else marks the analysis failed with its cause.
"""

from __future__ import annotations

import neo4j

from workers.analysis import jobs
from workers.celery_app import CPU_QUEUE, celery_app
from workers.process import process_driver
from workers.settings import get_settings

_TRANSIENT = (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.SessionExpired, neo4j.exceptions.TransientError)


@celery_app.task(name="atlas.run_analysis", bind=True, acks_late=True, queue=CPU_QUEUE, max_retries=5)
def run_analysis(self, analysis_id: str) -> str:  # noqa: ANN001 - celery Task
    settings = get_settings()
    driver = process_driver()
    try:
        return jobs.run_analysis(driver, analysis_id, database=settings.neo4j_database)
    except _TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc
    except Exception as exc:
        jobs.fail_analysis(driver, analysis_id, f"{type(exc).__name__}: {exc}", database=settings.neo4j_database)
        raise


# QK pairs of a head (workers/analysis/qk.py). Registered here, next to the task that runs it, so that
# importing this module (the worker, and service/api/qk.py) is what makes "qk_pairs" a known analysis kind.
def _qk_pairs(driver: neo4j.Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.qk import compute_qk_pairs

    return compute_qk_pairs(driver, p["graph_id"], layer=p.get("layer"), head=p.get("head"),
                            query_position=p.get("query_position"), key_position=p.get("key_position"),
                            top_k=int(p.get("top_k", 20)), from_circuit=bool(p.get("from_circuit", False)),
                            top_k_heads=int(p.get("top_k_heads", 3)), database=db)


jobs.ANALYSES.setdefault("qk_pairs", _qk_pairs)


# Interventions on a stored graph's prompt (workers/analysis/interventions.py), registered the same way.
def _interventions(driver: neo4j.Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.interventions import compute_interventions

    return compute_interventions(driver, p["graph_id"], list(p.get("node_ids") or []), str(p.get("mode", "ablate")),
                                 p.get("value"), top_k=int(p.get("top_k", 10)), database=db)


jobs.ANALYSES.setdefault("interventions", _interventions)
