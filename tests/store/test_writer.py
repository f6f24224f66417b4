"""The Neo4j graph writer against the real test server: exactly one complete graph per graph_id and
corpus aggregates counted once, whatever happens to the writers (retries, crashes, duplicates)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.store.graphs import (
    aggregates,
    assert_aggregates_equal,
    assert_occurrences_equal,
    assert_one_complete_copy,
    expected_aggregates,
    expected_occurrences,
    occurrences,
    random_record,
    stored,
)
from workers.store import writer
from workers.store.records import GraphRecord
from workers.store.writer import GraphBusy, write_graph
from workers.vocabulary.ids import feature_key


def test_write_then_rewrite_is_one_graph_and_aggregates_count_once(neo4j_driver, unique_id):
    rec = random_record(f"{unique_id}-g", unique_id, unique_id, seed=1)
    first = write_graph(neo4j_driver, rec)
    assert first.written and first.n_edges == len(rec.edge_w)
    again = write_graph(neo4j_driver, rec)
    assert not again.written
    assert_one_complete_copy(neo4j_driver, rec)
    assert_aggregates_equal(aggregates(neo4j_driver, unique_id), expected_aggregates(rec))
    # Features are MERGEd: one (:Feature) per key, shared by graphs.
    other = random_record(f"{unique_id}-h", unique_id, unique_id, seed=2)
    write_graph(neo4j_driver, other)
    with neo4j_driver.session() as s:
        keys = s.run("MATCH (f:Feature) WHERE f.fkey STARTS WITH $p RETURN f.fkey AS k", p=unique_id + "/").value()
    assert len(keys) == len(set(keys)) == len({n.fkey(unique_id) for n in rec.nodes + other.nodes} - {None})
    assert_aggregates_equal(aggregates(neo4j_driver, unique_id), expected_aggregates(rec, other))
    # OCCURS counts every feature instance once, its activation mass and the graphs it occurs in.
    assert_occurrences_equal(occurrences(neo4j_driver, unique_id), expected_occurrences(rec, other))


class Crash(BaseException):
    """Stands for the process dying between two batches (raised past every handler in the writer)."""


def test_retry_after_a_crash_mid_write_leaves_one_graph(neo4j_driver, unique_id, monkeypatch):
    monkeypatch.setattr(writer, "EDGE_BATCH", 50)
    monkeypatch.setattr(writer, "NODE_BATCH", 10)
    rec = random_record(f"{unique_id}-g", unique_id, unique_id, seed=3)
    calls = {"n": 0}

    def die_after_some_batches() -> bool:
        calls["n"] += 1
        if calls["n"] == 7:  # after a few node and edge batches went in
            raise Crash
        return False

    with pytest.raises(Crash):
        write_graph(neo4j_driver, rec, should_stop=die_after_some_batches, lease_s=1.0)
    partial = stored(neo4j_driver, rec.graph_id)
    assert partial["graphs"] == [{"status": "writing", "c": 1}] and 0 < partial["n_nodes"]
    assert aggregates(neo4j_driver, unique_id) == {}  # nothing counted for an unfinished graph
    time.sleep(1.2)  # the dead writer's lease expires
    assert write_graph(neo4j_driver, rec).written
    assert_one_complete_copy(neo4j_driver, rec)
    assert_aggregates_equal(aggregates(neo4j_driver, unique_id), expected_aggregates(rec))


def test_a_live_lease_keeps_other_writers_out_but_not_the_same_writer_retrying(neo4j_driver, unique_id):
    rec = random_record(f"{unique_id}-g", unique_id, unique_id, seed=4)
    with pytest.raises(Crash):
        write_graph(neo4j_driver, rec, should_stop=lambda: (_ for _ in ()).throw(Crash()), lease_s=60.0,
                    token="task-a")
    with pytest.raises(GraphBusy):
        write_graph(neo4j_driver, rec, token="task-b")
    assert write_graph(neo4j_driver, rec, token="task-a").written  # the same task, redelivered
    assert_one_complete_copy(neo4j_driver, rec)
    assert_aggregates_equal(aggregates(neo4j_driver, unique_id), expected_aggregates(rec))


def test_cancelled_write_leaves_nothing(neo4j_driver, unique_id, monkeypatch):
    monkeypatch.setattr(writer, "EDGE_BATCH", 50)
    rec = random_record(f"{unique_id}-g", unique_id, unique_id, seed=5)
    calls = {"n": 0}

    def cancel_midway() -> bool:
        calls["n"] += 1
        return calls["n"] >= 4

    with pytest.raises(InterruptedError):
        write_graph(neo4j_driver, rec, should_stop=cancel_midway)
    st = stored(neo4j_driver, rec.graph_id)
    assert st["graphs"] == [] and st["n_nodes"] == 0
    assert aggregates(neo4j_driver, unique_id) == {}


def test_duplicate_concurrent_writers_leave_one_graph(neo4j_driver, unique_id, monkeypatch):
    monkeypatch.setattr(writer, "EDGE_BATCH", 100)
    recs = [random_record(f"{unique_id}-g{i}", unique_id, unique_id, seed=10 + i, n_edges=1500) for i in range(3)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(rec: GraphRecord) -> None:
        # A duplicated task: keep trying until the graph is complete, as the Celery task's retry does.
        while True:
            try:
                res = write_graph(neo4j_driver, rec, lease_s=30.0)
                with lock:
                    outcomes.append("written" if res.written else "skipped")
                return
            except GraphBusy:
                threading.Event().wait(0.2)

    threads = [threading.Thread(target=run, args=(r,)) for r in recs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["skipped"] * 3 + ["written"] * 3
    for rec in recs:
        assert_one_complete_copy(neo4j_driver, rec)
    assert_aggregates_equal(aggregates(neo4j_driver, unique_id), expected_aggregates(*recs))


def test_feature_keys_and_validation():
    assert feature_key("set1", "L2.mlp", 5) == "set1/L2.mlp#5"
    rec = random_record("g", "c", "d", seed=0)
    with pytest.raises(ValueError, match="differ in length"):
        GraphRecord("g", "p", "c", "d", "m", rec.nodes, ["a"], [], [])
    bad = GraphRecord("g", "p", "c", "d", "m", rec.nodes, ["emb:p0"], ["nope"], [1.0])
    with pytest.raises(ValueError, match="edge endpoints are not nodes"):
        write_graph(None, bad)  # type: ignore[arg-type]  # rejected before any database call
