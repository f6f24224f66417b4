"""Folding corpus aggregates (workers/store/aggregates.py) against the real test server: every graph counted
exactly once whatever happens to the folders (a fold killed between chunks and resumed or taken over,
duplicated fold tasks racing, a zombie folder waking up after a takeover), checked against a brute-force
sum over the generated records."""

from __future__ import annotations

import threading
import time

import pytest

from tests.store.graphs import (
    aggregates,
    assert_aggregates_equal,
    assert_occurrences_equal,
    expected_aggregates,
    expected_occurrences,
    occurrences,
    random_record,
)
from workers.store import aggregates as agg
from workers.store.aggregates import FoldBusy, aggregate_state, fold_corpus
from workers.store.writer import delete_graph, write_graph


class Crash(BaseException):
    """Stands for the folder dying between two chunk transactions (raised past every handler)."""


def write_pending(driver, unique_id: str, seeds: list[int], **kw) -> list:  # noqa: ANN001
    recs = [random_record(f"{unique_id}-g{s}", unique_id, unique_id, seed=s, **kw) for s in seeds]
    for rec in recs:
        assert write_graph(driver, rec, fold=False).written
    return recs


def assert_exact(driver, corpus_id: str, recs: list) -> None:  # noqa: ANN001
    assert_aggregates_equal(aggregates(driver, corpus_id), expected_aggregates(*recs))
    assert_occurrences_equal(occurrences(driver, corpus_id), expected_occurrences(*recs))


def crash_on_call(monkeypatch, n: int) -> dict:  # noqa: ANN001
    """Make the n-th chunk transaction of the next fold die before it runs."""
    real = agg._apply_chunk
    calls = {"n": 0}

    def apply(tx, params):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash
        return real(tx, params)

    monkeypatch.setattr(agg, "_apply_chunk", apply)
    return calls


def test_graphs_written_without_fold_wait_pending_until_folded(neo4j_driver, unique_id):
    recs = write_pending(neo4j_driver, unique_id, [1, 2])
    assert aggregates(neo4j_driver, unique_id) == {}
    assert aggregate_state(neo4j_driver, unique_id) == {"pending": 2, "folding": 0, "folded": 0, "folds": 0}
    res = fold_corpus(neo4j_driver, unique_id)
    assert (res.folds, res.graphs, res.edges) == (1, 2, sum(len(r.edge_w) for r in recs))
    assert res.pairs_created == len(expected_aggregates(*recs)) and res.pairs_updated == 0
    assert_exact(neo4j_driver, unique_id, recs)
    assert aggregate_state(neo4j_driver, unique_id) == {"pending": 0, "folding": 0, "folded": 2, "folds": 1}
    # Folding again (a duplicated or retried task) finds nothing pending and changes nothing.
    again = fold_corpus(neo4j_driver, unique_id)
    assert (again.folds, again.graphs) == (0, 0)
    assert_exact(neo4j_driver, unique_id, recs)


def test_incremental_folds_update_existing_pairs(neo4j_driver, unique_id):
    first = write_pending(neo4j_driver, unique_id, [3, 4])
    fold_corpus(neo4j_driver, unique_id)
    later = write_pending(neo4j_driver, unique_id, [5, 6, 7])
    # max_edges of one graph: each later graph is its own fold, every one updating pairs made before.
    res = fold_corpus(neo4j_driver, unique_id, max_edges=1)
    assert (res.folds, res.graphs) == (3, 3) and res.pairs_updated > 0
    assert_exact(neo4j_driver, unique_id, first + later)


def test_fold_killed_between_chunks_resumes_without_double_counting(neo4j_driver, unique_id, monkeypatch):
    recs = write_pending(neo4j_driver, unique_id, [10, 11, 12], n_feat=60, n_edges=800)
    want = expected_aggregates(*recs)
    assert len(want) > 3 * 40  # several chunks of 40 pairs
    crash_on_call(monkeypatch, 3)
    with pytest.raises(Crash):
        fold_corpus(neo4j_driver, unique_id, token="fold-a", chunk_pairs=40)
    monkeypatch.undo()
    st = neo4j_driver.execute_query("MATCH (f:AggFold {corpus_id: $c}) RETURN f.applied AS a, f.writer AS w",
                                    c=unique_id).records[0]
    assert (st["a"], st["w"]) == (2, "fold-a")
    assert aggregate_state(neo4j_driver, unique_id)["folding"] == 3
    # What a reader sees mid-fold: pairs of applied chunks carry the whole fold, the others nothing yet.
    partial = aggregates(neo4j_driver, unique_id)
    assert 0 < len(partial) < len(want)
    assert_aggregates_equal(partial, {k: want[k] for k in partial})
    # Another folder is kept out while the dead one's lease lives; the same task, redelivered, resumes at once
    # (and with another chunk size asked for: the open fold keeps the partition it started with).
    with pytest.raises(FoldBusy):
        fold_corpus(neo4j_driver, unique_id, token="fold-b")
    res = fold_corpus(neo4j_driver, unique_id, token="fold-a", chunk_pairs=10_000)
    assert (res.folds, res.graphs) == (1, 3)
    assert_exact(neo4j_driver, unique_id, recs)
    assert aggregate_state(neo4j_driver, unique_id) == {"pending": 0, "folding": 0, "folded": 3, "folds": 1}


def test_dead_folders_fold_is_taken_over_and_the_zombie_applies_nothing(neo4j_driver, unique_id, monkeypatch):
    recs = write_pending(neo4j_driver, unique_id, [20, 21], n_feat=60, n_edges=800)
    seen: list[dict] = []
    real = agg._apply_chunk

    def record_then_crash(tx, params):  # noqa: ANN001, ANN202
        seen.append(dict(params))
        if len(seen) == 2:
            raise Crash
        return real(tx, params)

    monkeypatch.setattr(agg, "_apply_chunk", record_then_crash)
    with pytest.raises(Crash):
        fold_corpus(neo4j_driver, unique_id, token="fold-a", lease_s=1.0, chunk_pairs=40)
    monkeypatch.undo()
    time.sleep(1.2)  # the dead folder's lease expires; another folder takes the open fold over
    res = fold_corpus(neo4j_driver, unique_id, token="fold-b")
    assert (res.folds, res.graphs) == (1, 2)
    assert_exact(neo4j_driver, unique_id, recs)
    # The first folder was only paused: it wakes up and sends the chunk it was about to apply. Refused.
    with neo4j_driver.session() as s:
        assert s.execute_write(agg._apply_chunk, {**seen[1], "now": time.time()}) is False
    assert_exact(neo4j_driver, unique_id, recs)


def test_duplicated_fold_tasks_racing_count_each_graph_once(neo4j_driver, unique_id):
    recs = write_pending(neo4j_driver, unique_id, [30, 31, 32, 33], n_feat=60, n_edges=600)
    errors: list[BaseException] = []
    results = []

    def fold() -> None:
        try:
            results.append(fold_corpus(neo4j_driver, unique_id, max_edges=700, chunk_pairs=50, wait_s=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(r.graphs for r in results) == 4
    assert_exact(neo4j_driver, unique_id, recs)


def test_a_graph_of_an_open_fold_cannot_be_deleted(neo4j_driver, unique_id, monkeypatch):
    recs = write_pending(neo4j_driver, unique_id, [40], n_feat=60, n_edges=800)
    crash_on_call(monkeypatch, 2)
    with pytest.raises(Crash):
        fold_corpus(neo4j_driver, unique_id, token="fold-a", chunk_pairs=40)
    monkeypatch.undo()
    with pytest.raises(FoldBusy, match="being folded"):
        delete_graph(neo4j_driver, recs[0].graph_id)
    fold_corpus(neo4j_driver, unique_id, token="fold-a")
    assert_exact(neo4j_driver, unique_id, recs)
    delete_graph(neo4j_driver, recs[0].graph_id)  # folded: deletable (its aggregates stay, as documented)
    assert_exact(neo4j_driver, unique_id, recs)
