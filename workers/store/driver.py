"""The one way to connect to Neo4j: ``neo4j_driver(settings)``.

Everyone (API, workers, CLI, tests) goes through here so that the URI, user, database and password
rules live in one place. The password is ``settings.neo4j_password`` when set (tests, docker compose),
otherwise the one `atlas services up` generated and stored in the state directory.
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


def neo4j_driver(settings: Settings | None = None, **driver_kwargs: object) -> neo4j.Driver:
    """A driver for the configured server. The caller closes it (use it as a context manager).

    Queries should pass ``database_=settings.neo4j_database`` (or open sessions with
    ``database=settings.neo4j_database``); naming the database saves a routing round trip.
    Extra keyword arguments go to ``neo4j.GraphDatabase.driver`` (e.g. ``connection_timeout``).
    """
    settings = settings or get_settings()
    auth = (settings.neo4j_user, resolve_neo4j_password(settings))
    return neo4j.GraphDatabase.driver(settings.neo4j_uri, auth=auth, **driver_kwargs)  # type: ignore[arg-type]
