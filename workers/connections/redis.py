"""Where a Redis client comes from: ``redis_client(settings)``, the one way to connect.

Everyone (API, workers, CLI, runtime checks, tests) builds its client here, so the URL and the timeouts
live in one place. Without a socket timeout a client waits forever on a server that stopped answering;
every client here has one. Who passes what, and why:

- the API's one shared client (``service/api/deps.py``), the CLI and the demo: the defaults (5 s);
- Celery workers (``workers/process.py``): ``timeout_s=10, retry_on_timeout=True``, so a busy server
  (an AOF rewrite) does not fail a prompt; a dead one still raises and the task's retries take over;
- ``/healthz`` (``service/api/health.py``): ``timeout_s=2``, to answer "down" quickly;
- ``atlas services up`` (``service/runtime/redis.py``) polls with ``timeout_s=1`` inside its own deadline.

Celery's broker and result-backend connections are kombu's, configured in ``workers/celery_app.py``.
"""

from __future__ import annotations

import redis

from workers.settings import Settings, get_settings

TIMEOUT_S = 5.0  # default for reads and writes, and for opening the connection


def redis_client(settings: Settings | None = None, *, timeout_s: float = TIMEOUT_S,
                 connect_timeout_s: float | None = None, retry_on_timeout: bool = False) -> redis.Redis:
    """A client for ``settings.redis_url``. ``connect_timeout_s`` defaults to ``min(timeout_s, 5)``.

    The client holds a connection pool; close it when done (it is also a context manager).
    """
    settings = settings or get_settings()
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s,
                                socket_connect_timeout=connect_timeout_s if connect_timeout_s is not None
                                else min(timeout_s, TIMEOUT_S),
                                retry_on_timeout=retry_on_timeout)
