"""The Neo4j schema: migrations (``service.db.migrations``). The driver comes from ``workers.connections.neo4j``."""
