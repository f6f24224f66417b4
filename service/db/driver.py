"""The service's name for the one Neo4j connection recipe, which lives in ``workers.store.driver`` so that
workers use it without importing the service (dependency direction: service → workers)."""

from workers.store.driver import (
    Neo4jPasswordMissing,
    generated_password_file,
    neo4j_driver,
    resolve_neo4j_password,
)

__all__ = ["Neo4jPasswordMissing", "generated_password_file", "neo4j_driver", "resolve_neo4j_password"]
