"""What one Celery worker pool process keeps for all its tasks: a Neo4j driver, a Redis client and the model
cache (``workers.pipeline.compute.ModelCache``: models and dictionary sets, loaded once, kept LRU).

Each is created lazily, on first use in the pool process, after the fork: nothing is loaded at
``worker_process_init``, so a child starts in milliseconds and a model is loaded by the first task that needs
it (CUDA and open sockets do not survive a fork, which is why the parent never holds them). Every task of
the process that needs a model (prompts, local circuits, QK pairs, interventions) uses the one model cache,
so a worker never holds the same model twice.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import neo4j
    import redis

    from workers.pipeline.compute import ModelCache

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _process_state() -> dict[str, Any]:
    with _lock:
        if _state.get("pid") != os.getpid():  # first use in this process (or a forked child of a user)
            _state.clear()
            _state["pid"] = os.getpid()
        return _state


def loaded() -> list[str]:
    """What this process has made so far, of "driver", "redis" and "models" (``atlas.ping`` reports it)."""
    state = _process_state()
    return sorted({"driver": "driver", "redis": "redis", "cache": "models"}[k] for k in state if k != "pid")


def process_driver() -> neo4j.Driver:
    """This process's Neo4j driver. Managed transactions retry transient errors for
    ``ATLAS_PIPELINE_NEO4J_RETRY_S`` (20 s by default); beyond that the task's own retries take over."""
    state = _process_state()
    with _lock:
        if "driver" not in state:
            from workers.connections.neo4j import neo4j_driver
            from workers.pipeline.config import get_pipeline_settings

            state["driver"] = neo4j_driver(transaction_retry_s=get_pipeline_settings().neo4j_retry_s)
        return state["driver"]


def process_redis() -> redis.Redis:
    """This process's Redis client: retries a timed-out command once (a server busy rewriting its AOF)."""
    state = _process_state()
    with _lock:
        if "redis" not in state:
            from workers.connections.redis import redis_client

            state["redis"] = redis_client(timeout_s=10.0, connect_timeout_s=5.0, retry_on_timeout=True)
        return state["redis"]


def process_model_cache() -> ModelCache:
    """This process's one model cache (``ATLAS_PIPELINE_CACHE_SIZE`` entries), loading on the process's
    ``ATLAS_DEVICE`` in ``ATLAS_DTYPE``, dictionaries memory-mapped from ``<ATLAS_STATE_DIR>/snapshots`` unless
    ``ATLAS_PIPELINE_LAZY_DICTIONARIES=false``. The first call also applies ``ATLAS_PIPELINE_TORCH_THREADS``."""
    state = _process_state()
    with _lock:
        if "cache" not in state:
            from workers.models.placement import Placement
            from workers.pipeline.compute import ModelCache
            from workers.pipeline.config import get_pipeline_settings
            from workers.settings import get_settings

            cfg = get_pipeline_settings()
            if cfg.torch_threads > 0:
                import torch

                torch.set_num_threads(cfg.torch_threads)
            snapshots = get_settings().state_dir / "snapshots" if cfg.lazy_dictionaries else None
            state["cache"] = ModelCache(cfg.cache_size, Placement.from_settings(),  # ATLAS_DEVICE / ATLAS_DTYPE
                                        snapshots=snapshots)
        return state["cache"]
