"""Celery tasks. Small, idempotent, taking ids and plain values; the work lives in library code.

``atlas.ping`` proves the whole path (client -> Redis -> worker pool process -> result backend) and
reports which worker process ran it and which per-process resources that process has loaded.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from workers.celery_app import celery_app, loaded_process_resources


@celery_app.task(name="atlas.ping", acks_late=True)
def ping(payload: str = "ping", delay_s: float = 0.0) -> dict[str, Any]:
    """Echo ``payload`` with the worker's host, pid and loaded resources (a JSON-serialisable dict).

    ``delay_s`` keeps the task running that long first, so fault tests can kill it mid-flight.
    """
    if delay_s > 0:
        time.sleep(min(delay_s, 60.0))
    return {
        "payload": payload,
        "pong": True,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "resources": loaded_process_resources(),
        "time": time.time(),
    }
