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
  - Per-process resources (models, dictionaries) are loaded in ``worker_process_init`` in the pool
    child, never in the parent (CUDA does not survive fork); ``worker_proc_alive_timeout`` is raised
    because a slow model load would otherwise get the child killed after the default 4 s.

Use :func:`register_process_loader` to add such a resource and :func:`process_resource` to use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)

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


# --- per-process resources -------------------------------------------------------------------------------

ProcessLoader = Callable[[Settings], object]
_process_loaders: dict[str, ProcessLoader] = {}
_process_resources: dict[str, object] = {}


def register_process_loader(name: str) -> Callable[[ProcessLoader], ProcessLoader]:
    """Decorator: ``loader(settings)`` runs once in every worker pool process, at ``worker_process_init``.

    Its return value is then available to tasks as ``process_resource(name)``. Register from a module
    the worker imports (``workers.tasks`` or a module it imports) so the registration exists before
    the pool forks. Loaders run in registration order; an exception fails the child's start-up
    loudly rather than letting tasks run without their model.
    """

    def decorator(loader: ProcessLoader) -> ProcessLoader:
        if name in _process_loaders and _process_loaders[name] is not loader:
            raise ValueError(f"a process loader named {name!r} is already registered")
        _process_loaders[name] = loader
        return loader

    return decorator


def process_resource(name: str) -> object:
    """The object a registered loader produced in this worker process."""
    try:
        return _process_resources[name]
    except KeyError:
        known = ", ".join(sorted(_process_resources)) or "none"
        raise LookupError(
            f"process resource {name!r} is not loaded in this process (loaded: {known}). Resources exist only "
            "in Celery pool processes; register a loader with @register_process_loader and run a worker."
        ) from None


def loaded_process_resources() -> list[str]:
    return sorted(_process_resources)


def load_process_resources(settings: Settings | None = None) -> dict[str, float]:
    """Run every registered loader now; returns seconds per loader. Called by the signal below."""
    settings = settings or get_settings()
    timings: dict[str, float] = {}
    for name, loader in _process_loaders.items():
        started = time.monotonic()
        _process_resources[name] = loader(settings)
        timings[name] = time.monotonic() - started
        log.info("loaded process resource %s in %.1fs", name, timings[name])
    return timings


@worker_process_init.connect
def _on_worker_process_init(**_: object) -> None:
    load_process_resources()
