"""The query API over HTTP (real ASGI stack, real Neo4j/Redis, a real Celery worker for jobs): API keys and
401/403, cache headers, pagination, Neuronpedia export, analysis jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from service.auth import create_key, delete_key, revoke_key, verify_key
from tests.query.graphs import make_records
from workers.store.records import NodeRow


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keys(redis_client):  # noqa: ANN001, ANN201
    made = {name: create_key(redis_client, f"test-{name}", scopes)
            for name, scopes in {"cypher": ("cypher",), "write": ("write",), "admin": ("admin",)}.items()}
    yield {name: plain for name, (_, plain) in made.items()}
    for k, _ in made.values():
        delete_key(redis_client, k.key_id)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def small_graph() -> list:
    nodes = [NodeRow("emb:p0", "embedding", 0, 0, activation=1.0, token="the"),
             NodeRow("emb:p1", "embedding", 0, 1, activation=1.0, token="cat"),
             NodeRow("feat:L0.mlp:p1:f3", "feature", 0, 1, feature=3, dictionary="L0.mlp", activation=2.0, influence=0.5),
             NodeRow("feat:L1.mlp:p1:f1", "feature", 1, 1, feature=1, dictionary="L1.mlp", activation=1.0, influence=0.25),
             NodeRow("logit:p1:t7", "logit", 2, 1, activation=1.0)]
    edges = [("emb:p1", "feat:L0.mlp:p1:f3"), ("feat:L0.mlp:p1:f3", "feat:L1.mlp:p1:f1"),
             ("feat:L1.mlp:p1:f1", "logit:p1:t7"), ("emb:p0", "logit:p1:t7")]
    return [(nodes, edges, [1.0, 0.5, 2.0, -0.25])]


def test_keys_are_hashed_at_rest_and_revocable(redis_client):
    key, plain = create_key(redis_client, "hash-check", ("cypher",))
    stored = redis_client.hgetall(f"atlas:apikey:{key.key_id}")
    secret = plain.split("_", 2)[2]
    assert all(secret.encode() not in v for v in stored.values()) and len(stored[b"secret_sha256"]) == 64
    assert verify_key(redis_client, plain) == key
    assert verify_key(redis_client, plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert revoke_key(redis_client, key.key_id)
    assert verify_key(redis_client, plain) is None
    assert not revoke_key(redis_client, "0123456789abcdef")
    with pytest.raises(ValueError, match="unknown scopes"):
        create_key(redis_client, "x", ("root",))
    delete_key(redis_client, key.key_id)


def test_cypher_and_write_endpoints_need_the_right_key(client, keys):
    body = {"query": "RETURN 1 AS one"}
    r = client.post("/cypher", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
    assert client.post("/cypher", json=body, headers=bearer("ca_0123456789abcdef_" + "x" * 43)).status_code == 401
    assert client.post("/cypher", json=body, headers=bearer("not-a-key")).status_code == 401
    r = client.post("/cypher", json=body, headers=bearer(keys["write"]))
    assert r.status_code == 403 and "'cypher' scope" in r.json()["detail"]
    r = client.post("/cypher", json=body, headers={"X-API-Key": keys["cypher"]})
    assert r.status_code == 200 and r.json()["rows"] == [[1]]
    assert client.post("/cypher", json=body, headers=bearer(keys["admin"])).status_code == 200
    r = client.post("/cypher", json={"query": "MATCH (n) DETACH DELETE n"}, headers=bearer(keys["cypher"]))
    assert r.status_code == 422 and r.json()["rule"] == "no-writes"
    analysis = {"kind": "recurring_features", "params": {"corpus_id": "nothing"}}
    assert client.post("/analyses", json=analysis).status_code == 401
    assert client.post("/analyses", json=analysis, headers=bearer(keys["cypher"])).status_code == 403
    assert client.post("/global/virtual-weights", json={"dictionary_set_id": "d"}).status_code == 401
    local = {"node_id": "feat:L0.mlp:p0:f1"}
    assert client.post("/graphs/nope/local-circuits", json=local).status_code == 401
    assert client.post("/graphs/nope/local-circuits", json=local, headers=bearer(keys["write"])).status_code == 404
    assert client.post("/graphs/nope/local-circuits", json={"node_id": "emb:p0"},
                       headers=bearer(keys["write"])).status_code == 422


def test_corpus_ownership(neo4j_driver, redis_client, settings, keys):
    from fastapi import HTTPException

    from service.auth import authorize_corpus

    db = settings.neo4j_database
    owner = verify_key(redis_client, keys["write"])
    other, other_plain = create_key(redis_client, "other", ("write",))
    admin = verify_key(redis_client, keys["admin"])
    cid = f"own-{owner.key_id}"
    neo4j_driver.execute_query("CREATE (:Corpus {corpus_id: $c, owner_key_id: $k})", c=cid, k=owner.key_id,
                               database_=db)
    try:
        authorize_corpus(neo4j_driver, owner, cid, database=db)
        authorize_corpus(neo4j_driver, admin, cid, database=db)
        with pytest.raises(HTTPException) as info:
            authorize_corpus(neo4j_driver, other, cid, database=db)
        assert info.value.status_code == 403
        with pytest.raises(HTTPException) as info:
            authorize_corpus(neo4j_driver, owner, "no-such-corpus", database=db)
        assert info.value.status_code == 404
    finally:
        neo4j_driver.execute_query("MATCH (c:Corpus {corpus_id: $c}) DELETE c", c=cid, database_=db)
        delete_key(redis_client, other.key_id)


def test_circuit_reads_are_cacheable_and_exportable(client, store):
    (rec,) = store(make_records(small_graph()))
    url = f"/graphs/{rec.graph_id}/circuit"
    r = client.get(url, params={"edge_threshold": 0.5})
    assert r.status_code == 200
    body = r.json()
    assert [(e["source"], e["target"], e["weight"]) for e in body["edges"]] == [
        ("feat:L1.mlp:p1:f1", "logit:p1:t7", 2.0), ("emb:p1", "feat:L0.mlp:p1:f3", 1.0),
        ("feat:L0.mlp:p1:f3", "feat:L1.mlp:p1:f1", 0.5)]
    etag = r.headers["etag"]
    assert "max-age" in r.headers["cache-control"]
    assert client.get(url, params={"edge_threshold": 0.5}, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, params={"edge_threshold": 0.25}, headers={"If-None-Match": etag}).status_code == 200
    local = client.get(url, params={"target": "feat:L1.mlp:p1:f1"}).json()
    assert {n["node_id"] for n in local["nodes"]} == {"emb:p1", "feat:L0.mlp:p1:f3", "feat:L1.mlp:p1:f1"}
    npj = client.get(url, params={"format": "neuronpedia"}).json()
    assert npj["metadata"]["schema_version"] == 1 and npj["metadata"]["prompt_tokens"] == ["the", "cat"]
    by_id = {n["node_id"]: n for n in npj["nodes"]}
    assert by_id["emb:p0"]["layer"] == "E" and by_id["logit:p1:t7"]["layer"] == "2"
    assert by_id["feat:L0.mlp:p1:f3"]["feature_type"] == "cross layer transcoder"
    assert len(npj["links"]) == 4
    assert client.get("/graphs/nope/circuit").status_code == 404
    assert client.get(url, params={"target": "feat:L7.mlp:p0:f0"}).status_code == 404
    paths = client.get(f"/graphs/{rec.graph_id}/paths", params={"source": "emb:p1", "target": "logit:p1:t7"}).json()
    assert paths["paths"] == [{"nodes": ["emb:p1", "feat:L0.mlp:p1:f3", "feat:L1.mlp:p1:f1", "logit:p1:t7"],
                               "weights": [1.0, 0.5, 2.0], "product": 1.0}]


def test_graph_list_shows_prompt_and_targets_and_filters(client, store, neo4j_driver, settings):
    recs = make_records(small_graph() * 3)
    texts = ["The cat sat", "a dog ran", "the CAT ran"]
    for rec, model in zip(recs, ["m-a", "m-b", "m-a"], strict=True):
        rec.model = model
        rec.target = {"targets": [{"node_id": "logit:p1:t7", "label": "logit t7"}]}
    recs[2].provenance["prompt"] = texts[2]
    store(recs)
    # Prompt nodes as the pipeline makes them, for the first two graphs; the third has only its provenance.
    neo4j_driver.execute_query("UNWIND $rows AS r CREATE (:Prompt {prompt_id: r[0], text: r[1]})",
                               rows=[[r.prompt_id, t] for r, t in zip(recs[:2], texts, strict=False)],
                               database_=settings.neo4j_database)
    try:
        corpus = recs[0].corpus_id
        listed = client.get("/graphs", params={"corpus_id": corpus}).json()["items"]
        assert [(g["graph_id"], g["prompt_text"], g["targets"]) for g in listed] == \
            [(r.graph_id, t, ["logit t7"]) for r, t in zip(recs, texts, strict=True)]

        def ids(**params: str) -> list[str]:
            return [g["graph_id"] for g in client.get("/graphs", params={"corpus_id": corpus, **params}).json()["items"]]

        assert ids(text="CAT") == [recs[0].graph_id]  # case-insensitive; the Prompt-less graph never matches text
        assert ids(text="ran") == [recs[1].graph_id]
        assert ids(model="m-a") == [recs[0].graph_id, recs[2].graph_id]
        assert ids(model="m-a", text="sat") == [recs[0].graph_id]
        assert ids(model="nope") == [] and ids(text="zebra") == []
    finally:
        neo4j_driver.execute_query("MATCH (p:Prompt) WHERE p.prompt_id IN $ids DETACH DELETE p",
                                   ids=[r.prompt_id for r in recs], database_=settings.neo4j_database)


def test_pagination_and_feature_routes(client, store):
    recs = store(make_records(small_graph() * 3))
    corpus = recs[0].corpus_id
    seen, offset = [], 0
    while offset is not None:
        page = client.get("/graphs", params={"corpus_id": corpus, "limit": 2, "offset": offset}).json()
        seen += [g["graph_id"] for g in page["items"]]
        offset = page["next_offset"]
    assert seen == sorted(r.graph_id for r in recs)
    fkey = f"{recs[0].dictionary_set}/L0.mlp#3"
    page = client.get(f"/features/{fkey.replace('#', '%23')}", params={"corpus_id": corpus}).json()
    assert [a["activation"] for a in page["top_activations"]] == [2.0, 2.0, 2.0]
    assert page["top_activations"][0]["context"] == [{"pos": 0, "token": "the", "activation": None},
                                                     {"pos": 1, "token": "cat", "activation": 2.0}]
    (down,) = page["downstream"]
    # three graphs, each: w = 0.5 from an instance with activation 2.0 -> norm_w = 1.5 / 6.0
    assert (down["fkey"], down["sum_w"], down["source_activation_mass"], down["norm_w"]) == \
        (f"{recs[0].dictionary_set}/L1.mlp#1", 1.5, 6.0, 0.25)
    assert page["frequency"][0]["graph_fraction"] == 1.0
    acts = client.get(f"/features/{fkey.replace('#', '%23')}/activations", params={"limit": 2}).json()
    assert len(acts["items"]) == 2 and acts["next_offset"] == 2
    assert client.get("/features/none%23x").status_code == 404
    nb = client.get("/global/neighbours", params={"fkey": down["fkey"], "corpus_id": corpus}).json()
    assert [i["fkey"] for i in nb["items"]] == [fkey]
    between = client.get("/global/between", params={"source": fkey, "target": down["fkey"], "corpus_id": corpus}).json()
    assert between["direct"]["norm_w"] == 0.25 and between["paths"][0]["product"] == 0.25


def test_analysis_job_runs_on_a_real_worker(client, store, keys, settings):
    from tests.pipeline.conftest import start_worker, stop_worker

    recs = store(make_records(small_graph() * 2))
    r = client.post("/analyses", json={"kind": "recurring_features", "params": {"corpus_id": recs[0].corpus_id}},
                    headers=bearer(keys["write"]))
    assert r.status_code == 202 and r.json()["status"] == "queued"
    analysis_id = r.json()["analysis_id"]
    bad = client.post("/analyses", json={"kind": "circuit_difference", "params": {"graph_a": recs[0].graph_id}},
                      headers=bearer(keys["write"])).json()["analysis_id"]
    worker = start_worker(f"q-{analysis_id}", queues="cpu")
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            done = client.get(f"/analyses/{analysis_id}").json()
            failed = client.get(f"/analyses/{bad}").json()
            if done["status"] in ("done", "failed") and failed["status"] in ("done", "failed"):
                break
            time.sleep(0.5)
    finally:
        stop_worker(worker)
    assert done["status"] == "done", done
    assert [(f["fkey"].split("/")[1], f["n_graphs"]) for f in done["result"]["features"]] == [("L0.mlp#3", 2),
                                                                                            ("L1.mlp#1", 2)]
    assert failed["status"] == "failed" and "graph_b" in failed["error"]
    assert client.get("/analyses/an-nope").status_code == 404


def test_keys_cli_creates_lists_and_revokes(redis_client):
    from typer.testing import CliRunner

    from service.cli import app

    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "cli-test", "--scope", "cypher"])
    assert made.exit_code == 0, made.output
    plain = made.stdout.strip().splitlines()[0]
    key = verify_key(redis_client, plain)
    assert key is not None and key.scopes == ("cypher",)
    listed = runner.invoke(app, ["keys", "list"])
    assert key.key_id in listed.stdout and plain.split("_", 2)[2] not in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", key.key_id]).exit_code == 0
    assert verify_key(redis_client, plain) is None
    bad = runner.invoke(app, ["keys", "create", "x", "--scope", "root"])
    assert bad.exit_code == 1 and "unknown scopes" in bad.output


def test_keys_stored_in_neo4j_by_older_versions_move_to_redis_at_start_up(neo4j_driver, redis_client, settings):
    """A key written as an (:ApiKey) node (as versions before keys lived in Redis did) still authenticates after
    the API starts, and its node, with the digest, is gone from the database user Cypher reads."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import _digest

    db = settings.neo4j_database
    key_id, secret = "00c0ffee00c0ffee", "legacy-secret-" + "x" * 30
    neo4j_driver.execute_query(
        "CREATE (:ApiKey {key_id: $id, name: 'legacy', scopes: ['cypher'], secret_sha256: $d, created_at: 1.0, "
        "revoked: false})", id=key_id, d=_digest(secret), database_=db)
    try:
        with TestClient(create_app(settings)) as c:
            assert neo4j_driver.execute_query("MATCH (k:ApiKey) RETURN count(k) AS n",
                                              database_=db).records[0]["n"] == 0
            r = c.post("/cypher", json={"query": "RETURN 1 AS one"}, headers=bearer(f"ca_{key_id}_{secret}"))
            assert r.status_code == 200 and r.json()["rows"] == [[1]]
        assert verify_key(redis_client, f"ca_{key_id}_{secret}").scopes == ("cypher",)
    finally:
        neo4j_driver.execute_query("MATCH (k:ApiKey {key_id: $id}) DELETE k", id=key_id, database_=db)
        delete_key(redis_client, key_id)

