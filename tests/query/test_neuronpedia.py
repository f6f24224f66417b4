"""The one Neuronpedia exporter (workers/neuronpedia.py): the engine's ``Graph.to_neuronpedia`` and the API's
``format=neuronpedia`` give the same nodes and links for the same graph, and both are valid documents of
circuit-tracer 0.5.0's graph model (``circuit_tracer.frontend.graph_models.Model``, as the JSON Schema
``data/circuit_tracer_graph_model.schema.json`` generated from it by bench/circuit_tracer_ref/graph_model_schema.py).
The HTTP response matches the schema the API declares for it. Real Neo4j."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema_rs
import pytest

from service.query import circuits as q
from tests.engine.conftest import PROMPTS, calibrate, make_dicts, make_gpt2
from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.linearise import Linearised
from workers.engine.pruning import prune
from workers.engine.targets import top_logits
from workers.store.from_engine import graph_to_record
from workers.store.writer import delete_graph, write_graph
from workers.vocabulary import ids

CT_SCHEMA = json.loads((Path(__file__).parent / "data" / "circuit_tracer_graph_model.schema.json").read_text())


@pytest.fixture(scope="module")
def engine_graph():  # noqa: ANN201
    model = make_gpt2(2, 64)
    lin = Linearised(model, make_dicts(model, 2, 64))
    calibrate(lin, PROMPTS[0])
    tr = lin.trace(PROMPTS[0])
    g = build_graph(lin, tr, top_logits(lin, tr), AttributionSettings())
    g.influence = prune(g).influence
    g.token_strings = [f"tok{t}" for t in g.tokens]
    return g


@pytest.fixture
def stored(engine_graph, neo4j_driver, settings, unique_id):  # noqa: ANN001, ANN201
    """The unpruned graph written by the real writer without folding corpus aggregates (this test reads only the
    graph; an unpruned graph's ~8k feature pairs would stay in the aggregates after delete_graph)."""
    rec = graph_to_record(engine_graph, graph_id=f"{unique_id}-g", prompt_id=f"{unique_id}-p",
                          corpus_id=f"{unique_id}-c", model="m", dictionary_set="dset")
    write_graph(neo4j_driver, rec, database=settings.neo4j_database, fold=False)
    yield rec
    delete_graph(neo4j_driver, rec.graph_id, database=settings.neo4j_database)


def test_engine_and_api_exports_agree_and_are_valid_circuit_tracer_graphs(engine_graph, stored, neo4j_driver,
                                                                        settings):
    g, rec = engine_graph, stored
    c = q.circuit(neo4j_driver, rec.graph_id, q.Pruning(max_nodes=100_000, max_edges=10_000_000),
                  database=settings.neo4j_database)
    api, eng = q.to_neuronpedia(c), g.to_neuronpedia()
    validator = jsonschema_rs.validator_for(CT_SCHEMA)
    for doc in (api, eng):
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, errors[:5]
        assert all(isinstance(n["feature"], int) for n in doc["nodes"])
        assert doc["metadata"]["transcoder_list"]
    a_nodes, e_nodes = {n["node_id"]: n for n in api["nodes"]}, {n["node_id"]: n for n in eng["nodes"]}
    assert a_nodes.keys() <= e_nodes.keys() and len(a_nodes) > 10
    assert {n["feature_type"] for n in a_nodes.values()} >= {"embedding", "cross layer transcoder", "logit"}
    for nid, a in a_nodes.items():
        e = e_nodes[nid]
        for field in ("feature", "layer", "ctx_idx", "feature_type", "is_target_logit", "jsNodeId"):
            assert a[field] == e[field], (nid, field, a[field], e[field])
        for field in ("token_prob", "influence", "activation"):
            assert (a[field] is None) == (e[field] is None) and (a[field] is None or
                                                                 abs(a[field] - e[field]) <= 1e-6 * max(1, abs(e[field]))), (nid, field)
        if a["feature_type"] != "cross layer transcoder":  # a stored feature's clerp is its key (dset/L0.mlp#3)
            assert a["clerp"] == e["clerp"], nid
        # circuit-tracer's rule for the integer feature: the position for embeddings, the vocabulary index for
        # logits, -1 for error nodes
        kind = ids.parse(nid)
        want = {"emb": kind.pos, "pos": kind.pos, "logit": kind.token, "feat": kind.feature}.get(kind.kind, -1)
        assert a["feature"] == want, nid
    targets = {t.node_id for t in g.targets}
    assert {nid for nid, n in a_nodes.items() if n["is_target_logit"]} == targets & a_nodes.keys()
    e_links = {(lk["source"], lk["target"]): lk["weight"] for lk in eng["links"]}
    a_links = {(lk["source"], lk["target"]): lk["weight"] for lk in api["links"]}
    assert a_links.keys() <= e_links.keys() and a_links
    assert all(abs(w - e_links[k]) <= 1e-6 * max(1.0, abs(w)) for k, w in a_links.items())
    assert [x.split("/", 1)[1] for x in api["metadata"]["transcoder_list"]] == \
        [x.split("/", 1)[1] for x in eng["metadata"]["transcoder_list"]]
    assert all(x.startswith("dset/") for x in api["metadata"]["transcoder_list"])


def test_http_export_matches_the_declared_response_schema(stored, settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    rec = stored
    with TestClient(create_app(settings)) as client:
        openapi = client.get("/openapi.json").json()
        declared = openapi["paths"]["/graphs/{graph_id}/circuit"]["get"]["responses"]["200"]["content"]
        schema = {**declared["application/json"]["schema"], "components": openapi["components"]}
        validator = jsonschema_rs.validator_for(schema)
        for fmt in ("neuronpedia", "json"):
            body = client.get(f"/graphs/{rec.graph_id}/circuit", params={"format": fmt, "max_nodes": 50}).json()
            errors = [e.message for e in validator.iter_errors(body)]
            assert not errors, (fmt, errors[:5])
        body = client.get(f"/graphs/{rec.graph_id}/circuit", params={"format": "neuronpedia"}).json()
        assert jsonschema_rs.validator_for(CT_SCHEMA).is_valid(body)
        # a document that lacks what circuit-tracer requires is rejected by both schemas (the check can fail)
        del body["metadata"]["transcoder_list"]
        assert not validator.is_valid(body) and not jsonschema_rs.validator_for(CT_SCHEMA).is_valid(body)
