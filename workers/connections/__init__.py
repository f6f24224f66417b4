"""Where connections to the backing services come from: one factory per service.

- ``workers.connections.neo4j``: ``neo4j_driver(settings, ...)``, the Neo4j driver;
- ``workers.connections.redis``: ``redis_client(settings, ...)``, a Redis client.

API, workers, CLI, runtime checks, tests and benchmarks all build their clients here, each naming its
timeouts. It lives under ``workers/`` so that workers use it without importing the service (dependency
direction: service → workers). Celery's own broker connections are configured in ``workers/celery_app.py``.
"""
