"""Interventions (POST /graphs/{id}/interventions, workers/analysis/interventions.py) through the real API, a real
Celery worker and Neo4j, on an engine graph of the registered tiny model: the frozen change of every target equals
what the stored edges predict (−edge for an ablation, Σ (v/a − 1)·edge for a supernode), the live change is
reported beside it, the live top-logit changes are consistent, and bad requests are 4xx that queue nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline.conftest import registered, tiny_model, wait_for, worker_factory  # noqa: F401 - shared fixtures
from tests.query.graphs import registered_graph


@pytest.fixture(scope="module")
def client(settings, neo4j_driver, write_key) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {write_key[1]}"}) as c:
        yield c


def _run(client, graph_id: str, body: dict) -> dict:  # noqa: ANN001
    r = client.post(f"/graphs/{graph_id}/interventions", json=body)
    assert r.status_code == 202, r.text
    aid = r.json()["analysis_id"]
    done = wait_for(lambda: (a := client.get(f"/analyses/{aid}").json())["status"] in ("done", "failed") and a,
                    180, "the interventions analysis")
    assert done["status"] == "done", done["error"]
    return done["result"]


def test_frozen_effects_equal_the_edges_and_live_effects_sit_beside_them(client, registered, neo4j_driver,  # noqa: ANN001, F811
                                                                         settings, store, worker_factory) -> None:  # noqa: F811
    rec, _ = registered_graph(neo4j_driver, *registered, "the cat sat on the mat and the dog ran to the",
                              settings.neo4j_database)
    store([rec])
    worker_factory(queues="cpu")
    edges = {(s, d): w for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True)}
    targets = [t["node_id"] for t in rec.target["targets"]]
    # The features with the strongest direct edges into the targets.
    feats = sorted({s for (s, d) in edges if d in targets and s.startswith("feat:")},
                   key=lambda s: -max(abs(edges.get((s, t), 0.0)) for t in targets))
    assert len(feats) >= 3

    one = _run(client, rec.graph_id, {"node_ids": [feats[0]], "mode": "ablate"})
    assert [t["node_id"] for t in one["targets"]] == targets
    assert one["edits"][0]["new_activation"] == 0.0 and one["edits"][0]["clean_activation"] > 0
    for t in one["targets"]:
        stored = edges.get((feats[0], t["node_id"]), 0.0)
        assert t["from_edges"] == pytest.approx(-stored, rel=1e-5, abs=1e-6)
        assert t["frozen_change"] == pytest.approx(t["from_edges"], rel=1e-4, abs=1e-5)
        assert t["live_change"] is not None

    group = feats[:3]
    two = _run(client, rec.graph_id, {"node_ids": group, "mode": "scale", "value": 2.5, "top_k": 7})
    for e in two["edits"]:
        assert e["new_activation"] == pytest.approx(2.5 * e["clean_activation"])
    for t in two["targets"]:
        predicted = sum(1.5 * edges.get((s, t["node_id"]), 0.0) for s in group)
        assert t["from_edges"] == pytest.approx(predicted, rel=1e-5, abs=1e-6)
        assert t["frozen_change"] == pytest.approx(predicted, rel=1e-4, abs=1e-5)
    changes = two["top_logit_changes"]
    assert len(changes) == 7 and [abs(c["change"]) for c in changes] == sorted((abs(c["change"]) for c in changes),
                                                                                reverse=True)
    assert all(c["change"] == pytest.approx(c["after"] - c["before"], abs=1e-9) for c in changes)
    # Setting a feature to its own clean activation changes nothing, frozen or live.
    same = _run(client, rec.graph_id, {"node_ids": [feats[0]], "mode": "set",
                                       "value": one["edits"][0]["clean_activation"]})
    for t in same["targets"]:
        assert abs(t["frozen_change"]) < 1e-5 and abs(t["live_change"]) < 1e-4


def test_bad_requests_are_4xx_and_queue_nothing(client, store, neo4j_driver) -> None:  # noqa: ANN001
    from tests.query.graphs import make_records
    from tests.query.test_api import small_graph

    rec = store(make_records(small_graph()))[0]
    before = neo4j_driver.execute_query("MATCH (a:Analysis) RETURN count(a) AS n").records[0]["n"]
    url = f"/graphs/{rec.graph_id}/interventions"
    r = client.post(url, json={"node_ids": ["feat:L0.mlp:p1:f3"], "mode": "scale"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "value"]
    r = client.post(url, json={"node_ids": ["feat:L0.mlp:p1:f3", "feat:L0.mlp:p0:f9"], "mode": "ablate"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "node_ids", 1]
    r = client.post(url, json={"node_ids": ["emb:p1"]})
    assert r.status_code == 422 and "is not a feature" in r.json()["detail"][0]["msg"]
    assert client.post(url, json={"node_ids": []}).status_code == 422
    assert client.post(url, json={"node_ids": ["feat:L0.mlp:p1:f3"], "mode": "zap"}).status_code == 422
    assert client.post("/graphs/g-nope/interventions", json={"node_ids": ["feat:L0.mlp:p1:f3"]}).status_code == 404
    assert client.post(url, json={"node_ids": ["feat:L0.mlp:p1:f3"]}, headers={"Authorization": ""}).status_code == 401
    assert neo4j_driver.execute_query("MATCH (a:Analysis) RETURN count(a) AS n").records[0]["n"] == before
