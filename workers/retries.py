"""How Celery tasks treat errors: the one tuple of errors that go away by themselves, and the retry policy
every task declares with it (Celery's ``autoretry_for``, ``retry_backoff``, ``retry_jitter``).

A transient error (a server restarting, a lock conflict, a lease held by a duplicate delivery) is retried
with exponential backoff and full jitter (Celery's ``get_exponential_backoff_interval``: a random wait
between 0 and ``min(retry_backoff_max, 2**retries)`` seconds), up to the task's ``max_retries``. Anything
else is the task's to record as a failure (``workers/tasks.py``, ``workers/analysis_tasks.py``).
"""

from __future__ import annotations

from typing import Any

import neo4j
import redis
from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from workers.store.aggregates import FoldBusy
from workers.store.writer import GraphBusy

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    neo4j.exceptions.ServiceUnavailable,
    neo4j.exceptions.SessionExpired,
    neo4j.exceptions.TransientError,
    neo4j.exceptions.DatabaseUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
    GraphBusy,
    FoldBusy,
)


def retry_policy(*, max_retries: int, backoff_max_s: int, autoretry: bool = True) -> dict[str, Any]:
    """The keyword arguments of ``@celery_app.task`` for retrying ``TRANSIENT_ERRORS``.

    ``autoretry=False`` declares the same policy for a task that retries by hand because it must act before
    each retry (``compute_prompt``: refresh its heartbeat, or give the prompt up); it reads the policy back
    with :func:`backoff_s`.
    """
    return {"autoretry_for": TRANSIENT_ERRORS if autoretry else (), "retry_backoff": True,
            "retry_backoff_max": backoff_max_s, "retry_jitter": True, "max_retries": max_retries}


def backoff_s(task: Task) -> int:
    """The countdown Celery's autoretry would choose for ``task``'s next retry, from its declared policy."""
    return get_exponential_backoff_interval(factor=1, retries=task.request.retries,
                                            maximum=task.retry_backoff_max, full_jitter=task.retry_jitter)
