"""The Neo4j graph writer against the real test server: exactly one complete graph per graph_id and
corpus aggregates counted once, whatever happens to the writers (retries, crashes, duplicates)."""

from __future__ import annotations

import random
import threading

import pytest

from workers.store import writer
from workers.store.records import GraphRecord, NodeRow, feature_key
from workers.store.writer import GraphBusy, corpus_contribution, write_graph


def random_record(graph_id: str, corpus_id: str, dset: str, seed: int, n_feat: int = 40, n_edges: int = 400) -> GraphRecord:
    """A graph with embeddings, errors, features drawn from a small pool (so graphs share features and
    aggregate pairs repeat), a logit, and random edges."""
    rng = random.Random(seed)
    nodes = [NodeRow(f"emb:p{p}", "embedding", -1, p, token=f"tok{p}") for p in range(4)]
    nodes += [NodeRow(f"err:L0.mlp:p{p}", "error", 0, p) for p in range(4)]
    for _ in range(n_feat):
        f, p, layer = rng.randrange(12), rng.randrange(4), rng.randrange(2)
        nid = f"feat:L{layer}.mlp:p{p}:f{f}"
        if all(n.node_id != nid for n in nodes):
            nodes.append(NodeRow(nid, "feature", layer, p, feature=f, dictionary=f"L{layer}.mlp",
                                 activation=rng.random(), influence=rng.random()))
    nodes.append(NodeRow("logit:p3:t7", "logit", 2, 3))
    ids = [n.node_id for n in nodes]
    pairs = {(rng.choice(ids[:-1]), rng.choice(ids[8:])) for _ in range(n_edges)}
    pairs = sorted((s, d) for s, d in pairs if s != d)
    return GraphRecord(graph_id=graph_id, prompt_id=f"{graph_id}-p", corpus_id=corpus_id, dictionary_set=dset,
                       model="m", nodes=nodes, edge_src=[s for s, _ in pairs], edge_dst=[d for _, d in pairs],
                       edge_w=[rng.uniform(-1, 1) for _ in pairs], metrics={"replacement": 0.5})


def stored(driver, graph_id: str) -> dict:
    with driver.session() as s:
        g = s.run("MATCH (g:Graph {graph_id: $g}) RETURN g.status AS status, count(*) AS c", g=graph_id).data()
        nodes = s.run("MATCH (n:Node {graph_id: $g}) RETURN count(n) AS c, count(DISTINCT n.uid) AS u", g=graph_id).single()
        edges = s.run("MATCH (a:Node {graph_id: $g})-[r:ATTR]->(b) RETURN a.node_id AS s, b.node_id AS d, r.w AS w",
                      g=graph_id).data()
    return {"graphs": g, "n_nodes": nodes["c"], "n_uids": nodes["u"], "edges": edges}


def aggregates(driver, corpus_id: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    with driver.session() as s:
        rows = s.run("MATCH (a:Feature)-[e:AGG {corpus: $c}]->(b:Feature) RETURN a.fkey AS s, b.fkey AS d, "
                     "e.sum_w AS w, e.sum_abs_w AS aw, e.n AS n", c=corpus_id).data()
    return {(r["s"], r["d"]): (r["w"], r["aw"], r["n"]) for r in rows}


def expected_aggregates(*recs: GraphRecord) -> dict[tuple[str, str], tuple[float, float, int]]:
    out: dict[tuple[str, str], list] = {}
    for rec in recs:
        c = corpus_contribution(rec)
        for s, d, w, aw, n in zip(c["agg_src"], c["agg_dst"], c["agg_w"], c["agg_abs_w"], c["agg_n"], strict=True):
            row = out.setdefault((s, d), [0.0, 0.0, 0])
            row[0] += w
            row[1] += aw
            row[2] += n
    return {k: tuple(v) for k, v in out.items()}


def assert_aggregates_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == pytest.approx(want[k][0], abs=1e-9)
        assert got[k][1] == pytest.approx(want[k][1], abs=1e-9)
        assert got[k][2] == want[k][2]


def assert_one_complete_copy(driver, rec: GraphRecord) -> None:
    st = stored(driver, rec.graph_id)
    assert st["graphs"] == [{"status": "complete", "c": 1}]
    assert st["n_nodes"] == st["n_uids"] == len(rec.nodes)
    got = sorted((e["s"], e["d"], e["w"]) for e in st["edges"])
    want = sorted(zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True))
    assert got == want


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
    # OCCURS counts every feature instance once.
    with neo4j_driver.session() as s:
        occ = s.run("MATCH (f:Feature)-[o:OCCURS {corpus: $c}]->() RETURN sum(o.n) AS n", c=unique_id).single()["n"]
    assert occ == sum(n.kind == "feature" for n in rec.nodes + other.nodes)


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
    import time

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


def test_crash_between_aggregate_chunks_resumes_without_double_counting(neo4j_driver, unique_id, monkeypatch):
    monkeypatch.setattr(writer, "AGG_BATCH", 40)  # several chunk transactions
    rec = random_record(f"{unique_id}-g", unique_id, unique_id, seed=6, n_feat=60, n_edges=800)
    assert len(writer.contribution_chunks(corpus_contribution(rec), 40)) >= 3
    real = writer._apply_chunk
    calls = {"n": 0}

    def crash_on_third(tx, params):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash
        return real(tx, params)

    monkeypatch.setattr(writer, "_apply_chunk", crash_on_third)
    with pytest.raises(Crash):
        write_graph(neo4j_driver, rec, token="task-a")
    monkeypatch.setattr(writer, "_apply_chunk", real)
    applied = neo4j_driver.execute_query("MATCH (g:Graph {graph_id: $g}) RETURN g.agg_applied AS a, g.status AS s",
                                         g=rec.graph_id).records[0]
    assert (applied["a"], applied["s"]) == (2, "writing")
    # A cancellation now is ignored: the graph is finished, aggregates never stay half-applied.
    assert write_graph(neo4j_driver, rec, token="task-a", should_stop=lambda: True).written
    assert_one_complete_copy(neo4j_driver, rec)
    assert_aggregates_equal(aggregates(neo4j_driver, unique_id), expected_aggregates(rec))
    # A different graph under the same id after partial aggregates is refused, not double counted.
    other = random_record(f"{unique_id}-h", unique_id, unique_id, seed=7, n_feat=60, n_edges=800)
    monkeypatch.setattr(writer, "_apply_chunk", crash_on_third)
    calls["n"] = 0
    with pytest.raises(Crash):
        write_graph(neo4j_driver, other, token="task-b")
    monkeypatch.setattr(writer, "_apply_chunk", real)
    changed = random_record(f"{unique_id}-h", unique_id, unique_id, seed=8, n_feat=60, n_edges=800)
    with pytest.raises(RuntimeError, match="different graph"):
        write_graph(neo4j_driver, changed, token="task-b")
