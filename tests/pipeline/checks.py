"""Assertions about what the pipeline stored, shared by the pipeline tests and the demo's self-check, and
jobs moved through the pipeline's own state functions for the listing and viewer tests."""

from __future__ import annotations

import math
from collections.abc import Sequence


def played_job(driver, corpus, outcomes: Sequence[str], *, worker: str, error: str = "boom",  # noqa: ANN001
               seconds: float = 0.1, database: str | None = None):  # noqa: ANN201
    """Create ``corpus``'s job, queue it, and run its first ``len(outcomes)`` prompts to those final states
    with the pipeline's own ``start_prompt``/``finish_prompt`` (the rest stay queued). Returns the CreatedJob."""
    from workers.pipeline import jobs

    created = jobs.create_job(driver, corpus, database)
    assert jobs.set_job_state(driver, created.job_id, "queued", ("submitting",), database)
    for pid, outcome in zip(created.prompt_ids, outcomes, strict=False):
        assert jobs.start_prompt(driver, pid, worker, database)[0] == "run"
        jobs.finish_prompt(driver, pid, outcome, error=error if outcome == "failed" else None, seconds=seconds,
                           database=database)
    return created


def graphs_per_prompt(driver, corpus_id: str) -> dict[str, list[str]]:  # noqa: ANN001
    rows = driver.execute_query(
        "MATCH (p:Prompt {corpus_id: $c}) OPTIONAL MATCH (g:Graph {prompt_id: p.prompt_id}) "
        "RETURN p.prompt_id AS p, collect(g.status) AS s", c=corpus_id).records
    return {r["p"]: r["s"] for r in rows}


def assert_aggregates_match_stored_edges(driver, corpus_id: str) -> int:  # noqa: ANN001
    """AGG {corpus} edges equal the sums over the stored feature->feature ATTR edges of the corpus's complete
    graphs: aggregates counted exactly once per graph, and every graph folded (call it once the job is final:
    a final job state means its aggregates are folded). Returns the number of aggregate pairs."""
    unfolded = driver.execute_query(
        "MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'complete' AND g.agg_state <> 'folded' RETURN count(g) AS n",
        c=corpus_id).records[0]["n"]
    assert unfolded == 0, f"{unfolded} complete graphs of a finished job are not folded into the aggregates"
    stored = driver.execute_query(
        "MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'complete' "
        "MATCH (a:Node {graph_id: g.graph_id})-[r:ATTR]->(b:Node) WHERE a.fkey IS NOT NULL AND b.fkey IS NOT NULL "
        "RETURN a.fkey AS s, b.fkey AS d, sum(r.w) AS w, sum(abs(r.w)) AS aw, count(r) AS n", c=corpus_id).records
    agg = driver.execute_query(
        "MATCH (a:Feature)-[e:AGG {corpus: $c}]->(b:Feature) RETURN a.fkey AS s, b.fkey AS d, e.sum_w AS w, "
        "e.sum_abs_w AS aw, e.n AS n", c=corpus_id).records
    want = {(r["s"], r["d"]): (r["w"], r["aw"], r["n"]) for r in stored}
    got = {(r["s"], r["d"]): (r["w"], r["aw"], r["n"]) for r in agg}
    assert got.keys() == want.keys(), f"{len(got.keys() ^ want.keys())} aggregate pairs differ"
    for k, (w, aw, n) in want.items():
        assert got[k][2] == n, f"{k}: aggregate n {got[k][2]} != {n} stored edges"
        assert math.isclose(got[k][0], w, rel_tol=1e-6, abs_tol=1e-6) and math.isclose(got[k][1], aw, rel_tol=1e-6, abs_tol=1e-6)
    return len(want)


def assert_each_graph_once(driver, corpus_id: str) -> None:  # noqa: ANN001
    per = graphs_per_prompt(driver, corpus_id)
    bad = {p: s for p, s in per.items() if s != ["complete"]}
    assert not bad, f"prompts without exactly one complete graph: {bad}"
    dup_nodes = driver.execute_query(
        "MATCH (n:Node) WHERE n.graph_id IN $g WITH n.uid AS u, count(*) AS c WHERE c > 1 RETURN count(u) AS k",
        g=[f"g-{p}" for p in per]).records[0]["k"]
    assert dup_nodes == 0
    sizes = driver.execute_query(
        "MATCH (g:Graph {corpus_id: $c}) OPTIONAL MATCH (n:Node {graph_id: g.graph_id}) "
        "WITH g, count(n) AS nodes OPTIONAL MATCH (:Node {graph_id: g.graph_id})-[r:ATTR]->() "
        "RETURN g.graph_id AS g, g.n_nodes AS want_n, nodes, g.n_edges AS want_e, count(r) AS edges", c=corpus_id).records
    for r in sizes:
        assert (r["nodes"], r["edges"]) == (r["want_n"], r["want_e"]), dict(r)


def assert_stored_rows_complete(driver, graph_id: str) -> int:  # noqa: ANN001
    """In a graph stored unpruned, each target's in-edges sum to its value and each expanded feature's (one with
    in-edges) to its activation. Returns the number of rows checked."""
    import json

    g = driver.execute_query("MATCH (g:Graph {graph_id: $g}) RETURN g.target AS t", g=graph_id).records[0]
    rows = [(f"{graph_id}|{t['node_id']}", t["value"]) for t in json.loads(g["t"])["targets"]]
    rows += [(r["u"], r["a"]) for r in driver.execute_query(
        "MATCH (n:Feat {graph_id: $g}) WHERE EXISTS { (n)<-[:ATTR]-() } RETURN n.uid AS u, n.activation AS a",
        g=graph_id).records]
    for uid, value in rows:
        total = driver.execute_query("MATCH (:Node)-[e:ATTR]->(t:Node {uid: $u}) RETURN sum(e.w) AS w",
                                     u=uid).records[0]["w"]
        assert abs(total - value) < 1e-4 * max(1.0, abs(value)), (uid, total, value)
    return len(rows)


def dense_attribution(nodes: list[dict], edges: list[tuple[str, str, float]], target: dict) -> dict[str, float]:
    """Brute-force reference of the amount of ``target`` each node carries (workers/analysis/attribution_shares.py):
    x solving (I − M)ᵀ x = value·e_target with M[t, s] = w(s → t) / value(t), over the target's row and the
    rows of features (``nodes``: dicts with node_id, kind, activation; a feature's row sums to its activation)."""
    import numpy as np

    idx = {n["node_id"]: i for i, n in enumerate(nodes)}
    m = np.zeros((len(nodes), len(nodes)))
    for s, t, w in edges:
        if t == target["node_id"]:
            m[idx[t], idx[s]] += w / target["value"]
        elif nodes[idx[t]]["kind"] == "feature":
            m[idx[t], idx[s]] += w / nodes[idx[t]]["activation"]
    e = np.zeros(len(nodes))
    e[idx[target["node_id"]]] = target["value"]
    x = np.linalg.solve((np.eye(len(nodes)) - m).T, e)
    return {n["node_id"]: float(x[i]) for i, n in enumerate(nodes)}


def stored_position_shares(driver, graph_id: str, target: int = 0) -> tuple[dict[int, float], float]:  # noqa: ANN001
    """(position -> share, bias) of a stored graph's target, by :func:`dense_attribution` over its stored leaves
    (nodes without in-edges)."""
    import json

    t = json.loads(driver.execute_query("MATCH (g:Graph {graph_id: $g}) RETURN g.target AS t",
                                        g=graph_id).records[0]["t"])["targets"][target]
    nodes = [dict(r) for r in driver.execute_query(
        "MATCH (n:Node {graph_id: $g}) RETURN n.node_id AS node_id, n.kind AS kind, n.pos AS pos, "
        "n.activation AS activation", g=graph_id).records]
    edges = [(r["s"], r["t"], r["w"]) for r in driver.execute_query(
        "MATCH (s:Node {graph_id: $g})-[e:ATTR]->(t:Node) RETURN s.node_id AS s, t.node_id AS t, e.w AS w",
        g=graph_id).records]
    x = dense_attribution(nodes, edges, t)
    has_row = {t for _, t, _ in edges}
    shares: dict[int, float] = {}
    bias = 0.0
    for n in nodes:
        if n["node_id"] in has_row or n["node_id"] == t["node_id"]:
            continue
        if n["pos"] is None:
            bias += x[n["node_id"]]
        else:
            shares[n["pos"]] = shares.get(n["pos"], 0.0) + x[n["node_id"]]
    return shares, bias
