"""Where a Neo4j driver comes from: ``neo4j_driver(settings)``, the one way to connect.

Everyone (API, workers, CLI, runtime checks, tests, benchmarks) goes through here so that the URI, user,
database, password rules and timeouts live in one place. The password is ``settings.neo4j_password`` when
set (tests, docker compose), otherwise the one `atlas services up` generated and stored in the state
directory.

Timeouts are explicit arguments; their defaults are the ones that suit a long-lived process (API, worker,
CLI). Who passes what, and why:

- the API (``service/app.py``): ``connection_timeout_s=5``, ``acquisition_timeout_s=10``, so a health
  probe answers "down" quickly rather than hang on a dead server;
- Celery workers (``workers/process.py``): ``transaction_retry_s=ATLAS_PIPELINE_NEO4J_RETRY_S`` (20 s by default) for managed transactions;
- the start-up wait of ``atlas services up`` (``service/runtime/neo4j.py``): ``connection_timeout_s=2``
  and the password being checked, inside its own deadline loop.
"""

from __future__ import annotations

from pathlib import Path

import neo4j

from workers.settings import Settings, get_settings


class Neo4jPasswordMissing(RuntimeError):
    """No password configured and none generated yet."""


def generated_password_file(settings: Settings) -> Path:
    """Where `atlas services up` stores the password it generated for the local server (mode 0600)."""
    return settings.state_dir / "neo4j" / "password"


def resolve_neo4j_password(settings: Settings) -> str:
    """``settings.neo4j_password`` if non-empty, else the generated password from the state directory."""
    if settings.neo4j_password:
        return settings.neo4j_password
    path = generated_password_file(settings)
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        raise Neo4jPasswordMissing(
            f"no Neo4j password: ATLAS_NEO4J_PASSWORD is empty and {path} does not exist. "
            "Run `atlas services up` (it generates one), or set ATLAS_NEO4J_PASSWORD for an external server."
        ) from None
    if not password:
        raise Neo4jPasswordMissing(f"{path} is empty; delete it and the Neo4j state, or set ATLAS_NEO4J_PASSWORD.")
    return password


# Defaults for a long-lived process. The driver's own defaults are 30 s, 60 s and 30 s.
CONNECTION_TIMEOUT_S = 30.0  # opening a TCP connection and the Bolt handshake
ACQUISITION_TIMEOUT_S = 60.0  # waiting for a connection from the pool (includes opening one)
TRANSACTION_RETRY_S = 30.0  # how long execute_query / managed transactions retry transient errors


def neo4j_driver(settings: Settings | None = None, *, connection_timeout_s: float = CONNECTION_TIMEOUT_S,
                 acquisition_timeout_s: float = ACQUISITION_TIMEOUT_S,
                 transaction_retry_s: float = TRANSACTION_RETRY_S, password: str | None = None) -> neo4j.Driver:
    """A driver for the configured server. The caller closes it (use it as a context manager).

    Queries should pass ``database_=settings.neo4j_database`` (or open sessions with
    ``database=settings.neo4j_database``); naming the database saves a routing round trip.
    ``password`` overrides the configured one (the start-up check of a freshly generated password).
    """
    settings = settings or get_settings()
    auth = (settings.neo4j_user, password if password is not None else resolve_neo4j_password(settings))
    return neo4j.GraphDatabase.driver(settings.neo4j_uri, auth=auth, connection_timeout=connection_timeout_s,
                                      connection_acquisition_timeout=acquisition_timeout_s,
                                      max_transaction_retry_time=transaction_retry_s)
