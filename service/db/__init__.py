"""Neo4j access shared by the service, the workers and the CLI: the driver factory and migrations."""

from service.db.driver import (
    Neo4jPasswordMissing,
    generated_password_file,
    neo4j_driver,
    resolve_neo4j_password,
)

__all__ = ["Neo4jPasswordMissing", "generated_password_file", "neo4j_driver", "resolve_neo4j_password"]
