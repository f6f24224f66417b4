"""The Celery application: Redis broker and result backend, configured for long GPU tasks.

Why each setting (see also shared/REFERENCE.md, "Celery with Redis"):
  - ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only after it finished,
    and a child killed mid-task (OOM, SIGKILL) puts it back on the queue instead of losing it.
  - ``worker_prefetch_multiplier=1``: a worker holds one reserved task at a time, so a long GPU job does
    not hide other work in its prefetch buffer.
  - ``visibility_timeout`` above the hard time limit, in broker AND result-backend transport options,
    the same value in every client (all read ``Settings``): otherwise Redis redelivers a still-running
    task and it runs twice.
  - JSON only: tasks take ids and plain values, never pickled objects.
  - queues ``gpu`` and ``cpu``: start one ``-c 1`` worker per GPU on ``gpu``, CPU work elsewhere.
  - Models, dictionaries and clients are made lazily, in the pool child, by the first task that needs them
    (``workers/process.py``), never in the parent (CUDA does not survive fork); ``worker_proc_alive_timeout``
    stays raised so a child slowed by a loaded machine is not killed after the default 4 s.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from workers.settings import Settings, get_settings

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration derived from ``settings`` (one source of truth for every client)."""
    transport = {"visibility_timeout": settings.broker_visibility_timeout_s}
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "prefork",
        "worker_concurrency": 1,
        "worker_proc_alive_timeout": settings.worker_proc_alive_timeout_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_hard_time_limit_s,
        # Explicit exchange and routing key per queue: a bare Queue("gpu") would be bound to the default
        # exchange with the default queue's routing key, and gpu-bound tasks would land on cpu.
        "task_queues": tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (GPU_QUEUE, CPU_QUEUE)),
        "task_default_queue": CPU_QUEUE,
        "task_create_missing_queues": False,
        "task_track_started": True,
        "result_extended": True,
        "result_expires": 7 * 24 * 3600,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    app = Celery("circuit_atlas", include=["workers.tasks", "workers.analysis_tasks"])
    app.conf.update(celery_config(settings or get_settings()))
    return app


celery_app = make_celery()
