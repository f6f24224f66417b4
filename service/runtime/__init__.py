"""Local Neo4j and Redis processes started, checked and stopped by the project (`atlas services ...`)."""
