"""Fixtures of the query tests: writing generated graphs with the project's real writer."""

from __future__ import annotations

import pytest

from workers.store.records import GraphRecord
from workers.store.writer import delete_graph, write_graph


@pytest.fixture
def store(neo4j_driver, settings):  # noqa: ANN001, ANN201
    """``store(records)`` writes graphs with the real writer; they are deleted at teardown."""
    written: list[str] = []

    def write(records: list[GraphRecord]) -> list[GraphRecord]:
        for rec in records:
            write_graph(neo4j_driver, rec, database=settings.neo4j_database)
            written.append(rec.graph_id)
        return records

    yield write
    for gid in written:
        delete_graph(neo4j_driver, gid, database=settings.neo4j_database)
