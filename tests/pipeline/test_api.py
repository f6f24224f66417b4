"""Registry and corpus submission over the HTTP API (in-process ASGI, real Neo4j and Redis): every bad
input is a 4xx naming the field and writes nothing; duplicates are dropped and reported; cancel of a
queued job drops its work; the write routes need a 'write' API key and a job is cancelled only by its owner."""

from __future__ import annotations

import json
import shutil

import pytest

from service.auth import create_key, delete_key
from workers.pipeline.config import PipelineSettings

PROMPTS = ["the cat sat on the mat", "alice and bob went to the store", "( [ ] )"]


def counts(driver) -> dict[str, int]:  # noqa: ANN001
    rec = driver.execute_query(
        "CALL () { MATCH (c:Corpus) RETURN count(c) AS corpora } CALL () { MATCH (j:Job) RETURN count(j) AS jobs } "
        "CALL () { MATCH (p:Prompt) RETURN count(p) AS prompts } RETURN corpora, jobs, prompts").records[0]
    return dict(rec)


def body(model: str, dset: str, prompts: list, **extra) -> dict:
    return {"model": model, "dictionary_set": dset, "prompts": prompts, **extra}


def test_registry_by_path_with_content_hash(client, tiny_model, unique_id, tmp_path):
    model_dir, dict_dir = tiny_model
    r = client.post("/registry/models", json={"model_id": f"{unique_id}-m", "path": str(model_dir)})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["format"] == "hf" and m["n_ctx"] == 64 and len(m["content_hash"]) == 64
    r = client.post("/registry/dictionary-sets",
                    json={"dictionary_set_id": f"{unique_id}-d", "path": str(dict_dir), "model_id": f"{unique_id}-m"})
    assert r.status_code == 201 and r.json()["n_dictionaries"] == 4 and r.json()["format"] == "native"
    listed = client.get("/registry").json()
    assert f"{unique_id}-m" in {x["model_id"] for x in listed["models"]}
    # Same content elsewhere hashes the same; any changed byte changes the hash.
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    r2 = client.post("/registry/models", json={"model_id": f"{unique_id}-m2", "path": str(copy)}).json()
    assert r2["content_hash"] == m["content_hash"]
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "note": "changed"}))
    r3 = client.post("/registry/models", json={"model_id": f"{unique_id}-m2", "path": str(copy)}).json()
    assert r3["content_hash"] != m["content_hash"]
    bad = client.post("/registry/models", json={"model_id": f"{unique_id}-x", "path": str(tmp_path / "nope")})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "path"]
    bad = client.post("/registry/dictionary-sets",
                      json={"dictionary_set_id": f"{unique_id}-d2", "path": str(dict_dir), "model_id": "no-such-model"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "model_id"]


def test_worker_cache_refuses_changed_files(neo4j_driver, tiny_model, unique_id, tmp_path, settings):
    from workers.pipeline import registry
    from workers.pipeline.compute import ModelCache

    model_dir, dict_dir = tiny_model
    copy = tmp_path / "dicts"
    shutil.copytree(dict_dir, copy)
    model = registry.register_model(neo4j_driver, f"{unique_id}-m", model_dir, settings.neo4j_database)
    dset = registry.register_dictionary_set(neo4j_driver, f"{unique_id}-d", copy, model.model_id, settings.neo4j_database)
    cache = ModelCache()
    first = cache.get(model, dset)
    assert cache.get(model, dset) is first and cache.loads == 1  # loaded once, kept
    weights = next(p for p in copy.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(registry.RegisteredFilesChanged, match="changed since registration"):
        cache.get(model, dset)


@pytest.fixture
def limits(client):  # noqa: ANN001
    """Small limits on the app under test, restored afterwards."""
    from service.api.deps import pipeline_settings

    small = PipelineSettings(max_prompt_tokens=12, max_upload_bytes=4000)
    client.app.dependency_overrides[pipeline_settings] = lambda: small
    yield small
    client.app.dependency_overrides.pop(pipeline_settings)


def _bad_requests(model: str, dset: str) -> list[tuple[str, dict, int, list]]:
    """(what, request kwargs, status, expected loc prefix)."""
    long_text = " ".join(["the cat"] * 10)  # 21 tokens > the 12 configured
    ctx_text = " ".join(["the"] * 70)  # 71 tokens > the model's 64 (with a raised configured limit: see test)
    return [
        ("empty corpus", {"json": body(model, dset, [])}, 422, ["body", "prompts"]),
        ("prompt over the configured limit", {"json": body(model, dset, ["the cat", long_text])}, 422,
         ["body", "prompts", 1, "text"]),
        ("unknown model", {"json": body("no-such-model", dset, PROMPTS)}, 422, ["body", "model"]),
        ("unknown dictionary set", {"json": body(model, "no-such-set", PROMPTS)}, 422, ["body", "dictionary_set"]),
        ("invalid UTF-8", {"content": b'{"model": "' + model.encode() + b'", "prompts": ["caf\xe9"]}',
                           "headers": {"content-type": "application/json"}}, 400, ["body"]),
        ("oversize upload", {"json": body(model, dset, ["the cat"] * 600)}, 413, ["body"]),
        ("empty prompt text", {"json": body(model, dset, ["the cat", "  "])}, 422, ["body", "prompts", 1, "text"]),
        ("bad target", {"json": body(model, dset, [{"text": "the cat", "targets": ["logit"]}])}, 422,
         ["body", "prompts", 0, "targets", 0]),
        ("multi-token target", {"json": body(model, dset, [{"text": "the cat", "targets": ["logit:the cat"]}])}, 422,
         ["body", "prompts", 0, "targets", 0]),
        ("unknown setting", {"json": body(model, dset, PROMPTS, settings={"tau": 0.1})}, 422,
         ["body", "settings", "tau"]),
        ("0 for a boolean (JSON types are never coerced)", {"json": body(model, dset, PROMPTS, settings={"prune": 0})},
         422, ["body", "settings", "prune"]),
        ("a numeric string for an integer", {"json": body(model, dset, PROMPTS, settings={"max_features": "5"})}, 422,
         ["body", "settings", "max_features"]),
        ("JSONL settings are query text, read as numbers, but still checked",
         {"content": b'"the cat"\n', "params": {"model": model, "dictionary_set": dset, "max_features": "five"},
          "headers": {"content-type": "application/x-ndjson"}}, 422, ["query", "max_features"]),
        ("malformed JSON", {"content": b'{"model": ', "headers": {"content-type": "application/json"}}, 400, ["body"]),
        ("malformed JSONL line", {"content": b'"the cat"\n{oops\n', "params": {"model": model, "dictionary_set": dset},
                                  "headers": {"content-type": "application/x-ndjson"}}, 400, ["body", "line 2"]),
        ("model context", {"json": body(model, dset, [ctx_text])}, 422, ["body", "prompts", 0, "text"]),
    ]


def test_every_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(client, neo4j_driver, registered, limits):
    model, dset = registered
    before = counts(neo4j_driver)
    for what, kwargs, status, loc in _bad_requests(model, dset):
        if what == "model context":
            limits.max_prompt_tokens = 512  # now the model's own context (64) is the binding limit
        r = client.post("/corpora", **kwargs)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        detail = r.json()["detail"]
        assert detail[0]["loc"][: len(loc)] == loc, f"{what}: {detail}"
        assert detail[0]["msg"], what
        if what == "model context":
            assert "model's context" in detail[0]["msg"] and "71" in detail[0]["msg"]
        if what == "prompt over the configured limit":
            assert "limit is 12" in detail[0]["msg"]
    assert counts(neo4j_driver) == before


def test_duplicates_are_dropped_and_reported_and_cancel_drops_queued_work(client, neo4j_driver, registered):
    model, dset = registered
    prompts = ["the cat sat", {"text": "the dog ran", "targets": ["top"]}, "the cat sat",
               {"text": "the dog ran", "targets": ["top"]}, {"text": "the dog ran", "targets": [{"logit": "the"}]}]
    r = client.post("/corpora", json=body(model, dset, prompts))
    assert r.status_code == 202, r.text
    acc = r.json()
    assert acc["n_prompts"] == 3
    assert acc["duplicates"] == [{"index": 2, "duplicate_of": 0}, {"index": 3, "duplicate_of": 1}]
    status = client.get(acc["job_url"]).json()
    assert status["total"] == 3 and status["state"] in ("queued", "running")
    # No worker consumes this job's queue in this test: cancelling drops every queued prompt at once.
    r = client.delete(acc["job_url"])
    assert r.status_code == 202
    final = r.json()
    assert final["state"] == "cancelled" and final["cancelled"] == 3 and final["done"] == 0
    assert client.get("/jobs/jnope").status_code == 404


def test_jsonl_upload(client, registered):
    model, dset = registered
    lines = b'"the cat sat"\n\n{"text": "the dog ran", "targets": ["diff:the,a"]}\n'
    r = client.post("/corpora", content=lines, headers={"content-type": "application/x-ndjson"},
                    params={"model": model, "dictionary_set": dset, "max_features": "5"})
    assert r.status_code == 202, r.text
    status = client.get(r.json()["job_url"]).json()
    assert status["total"] == 2 and status["settings"]["max_features"] == 5
    client.delete(r.json()["job_url"])


@pytest.fixture
def other_keys(redis_client):  # noqa: ANN001, ANN201
    """Plaintexts of fresh keys besides the client's own: another 'write' key, a 'cypher'-only key, an admin key."""
    made = {name: create_key(redis_client, f"pipeline-{name}", scopes)
            for name, scopes in {"writer": ("write",), "cypher": ("cypher",), "admin": ("admin",)}.items()}
    yield {name: plain for name, (_, plain) in made.items()}
    for k, _ in made.values():
        delete_key(redis_client, k.key_id)


@pytest.fixture
def anonymous(client):  # noqa: ANN001, ANN201
    """The same app without the default API key header (no second lifespan: app.state is already set)."""
    from fastapi.testclient import TestClient

    return TestClient(client.app)


def bearer(plain: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plain}"}


def test_write_routes_need_a_write_key_and_write_nothing_without_one(client, anonymous, neo4j_driver, registered,
                                                                    other_keys, tiny_model, unique_id):
    model, dset = registered
    model_dir, dict_dir = tiny_model
    before = counts(neo4j_driver)
    good = body(model, dset, PROMPTS)
    r = anonymous.post("/corpora", json=good)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
    assert anonymous.post("/corpora", json=good, headers=bearer("ca_0123456789abcdef_" + "x" * 43)).status_code == 401
    r = anonymous.post("/corpora", json=good, headers=bearer(other_keys["cypher"]))
    assert r.status_code == 403 and "'write'" in r.json()["detail"]
    # Auth comes before validation: a bad body without a key is a 401, not a 422.
    assert anonymous.post("/corpora", json=body(model, dset, [])).status_code == 401
    assert counts(neo4j_driver) == before
    registrations = [("/registry/models", {"model_id": f"{unique_id}-anon", "path": str(model_dir)}),
                     ("/registry/dictionary-sets", {"dictionary_set_id": f"{unique_id}-anon-d", "path": str(dict_dir),
                                                    "model_id": model})]
    for path, payload in registrations:
        assert anonymous.post(path, json=payload).status_code == 401, path
        assert anonymous.post(path, json=payload, headers=bearer(other_keys["cypher"])).status_code == 403, path
    listed = anonymous.get("/registry").json()  # listing stays public
    assert f"{unique_id}-anon" not in {m["model_id"] for m in listed["models"]}
    assert f"{unique_id}-anon-d" not in {d["dictionary_set_id"] for d in listed["dictionary_sets"]}


def test_corpus_records_its_owner_and_only_the_owner_or_admin_cancels(client, anonymous, neo4j_driver, registered,
                                                                      other_keys, write_key, settings):
    model, dset = registered
    r = client.post("/corpora", json=body(model, dset, PROMPTS))
    assert r.status_code == 202, r.text
    acc = r.json()
    owner = neo4j_driver.execute_query("MATCH (c:Corpus {corpus_id: $c}) RETURN c.owner_key_id AS o",
                                       c=acc["corpus_id"], database_=settings.neo4j_database).records[0]["o"]
    assert owner == write_key[0].key_id
    assert anonymous.get(acc["job_url"]).status_code == 200  # reading a job stays public
    assert anonymous.delete(acc["job_url"]).status_code == 401
    assert anonymous.delete(acc["job_url"], headers=bearer(other_keys["cypher"])).status_code == 403
    r = anonymous.delete(acc["job_url"], headers=bearer(other_keys["writer"]))
    assert r.status_code == 403 and "another API key" in r.json()["detail"]
    assert anonymous.delete("/jobs/jnope", headers=bearer(other_keys["writer"])).status_code == 404
    assert client.get(acc["job_url"]).json()["state"] in ("queued", "running")  # refused cancels changed nothing
    # Another client's corpus: an admin key may cancel it.
    r2 = client.post("/corpora", json=body(model, dset, ["the cat sat"]))
    assert r2.status_code == 202, r2.text
    r = anonymous.delete(r2.json()["job_url"], headers=bearer(other_keys["admin"]))
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    r = client.delete(acc["job_url"])
    assert r.status_code == 202 and r.json()["state"] == "cancelled"


def test_registration_is_limited_to_the_configured_roots_and_refuses_pickles(settings, neo4j_driver, write_key,
                                                                            tiny_model, unique_id, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app

    model_dir, dict_dir = tiny_model
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    allowed.mkdir()
    shutil.copytree(model_dir, elsewhere)
    shutil.copytree(model_dir, allowed / "model")
    (allowed / "escape").symlink_to(elsewhere)
    shutil.copytree(model_dir, allowed / "pickled")
    (allowed / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: never to be loaded
    restricted = settings.model_copy(update={"registry_roots": str(allowed)})
    with TestClient(create_app(restricted), headers={"Authorization": f"Bearer {write_key[1]}"}) as c:
        def register(model_id: str, path: object) -> object:
            return c.post("/registry/models", json={"model_id": model_id, "path": str(path)})

        for i, path in enumerate([elsewhere, allowed / "escape", f"{allowed}/../elsewhere", "/etc"]):
            r = register(f"{unique_id}-out{i}", path)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["detail"][0]["loc"] == ["body", "path"] and str(allowed) in r.json()["detail"][0]["msg"]
        r = c.post("/registry/dictionary-sets", json={"dictionary_set_id": f"{unique_id}-dout", "path": str(dict_dir),
                                                      "model_id": f"{unique_id}-in"})
        assert r.status_code == 403 and str(allowed) in r.text
        r = register(f"{unique_id}-pickled", allowed / "pickled")
        assert r.status_code == 422 and "pickled weights (pytorch_model.bin)" in r.text
        assert register(f"{unique_id}-in", allowed / "model").status_code == 201
    stored = neo4j_driver.execute_query("MATCH (m:Model) WHERE m.model_id STARTS WITH $p RETURN m.model_id AS id",
                                        p=unique_id, database_=settings.neo4j_database).records
    assert [r["id"] for r in stored] == [f"{unique_id}-in"]  # the refusals wrote nothing


def test_upload_limits_hold_for_chunked_bodies_prompt_counts_and_every_post_route(client, neo4j_driver, registered,
                                                                                  limits, settings, write_key):
    import asyncio

    from fastapi.testclient import TestClient

    from service.app import create_app

    model, dset = registered
    before = counts(neo4j_driver)
    # A chunked body (no Content-Length) that would never end, fed to the app one 1 KB chunk at a time (straight
    # through ASGI: the test client would read a generator whole before the app sees it).
    chunks = 0

    async def receive() -> dict:
        nonlocal chunks
        chunks += 1
        head = b'{"model": "' + model.encode() + b'", "dictionary_set": "' + dset.encode() + b'", "prompts": ['
        return {"type": "http.request", "body": head if chunks == 1 else b'"the cat sat on the mat", ' * 40,
                "more_body": chunks < 100_000}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/corpora", "raw_path": b"/corpora", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("testserver", 80),
             "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {write_key[1]}".encode())]}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"ATLAS_PIPELINE_MAX_UPLOAD_BYTES" in sent[1]["body"]
    assert chunks < 10  # refused while streaming (the cap is 4,000 bytes), not after reading it all
    limits.max_prompts = 3
    r = client.post("/corpora", json=body(model, dset, ["a b", "b c", "c d", "d e"]))
    assert r.status_code == 413 and "the corpus has 4 prompts; the limit is 3 (ATLAS_PIPELINE_MAX_PROMPTS)" in r.text
    assert client.post("/corpora", json=body(model, dset, ["the cat", "the dog", "the mat"])).status_code == 202
    after = counts(neo4j_driver)
    assert (after["corpora"] - before["corpora"], after["prompts"] - before["prompts"]) == (1, 3)

    # Every other POST route: ATLAS_API_MAX_BODY_BYTES, checked before the key and before the body is parsed.
    small = settings.model_copy(update={"api_max_body_bytes": 2000})
    with TestClient(create_app(small), headers={"Authorization": f"Bearer {write_key[1]}"}) as c:
        big = {"query": "RETURN 1 AS x // " + "x" * 3000}
        for path, payload in [("/cypher", big), ("/analyses", {"kind": "recurring_features", "params": {"x": "y" * 3000}}),
                              ("/registry/models", {"model_id": "m", "path": "/" + "p" * 3000})]:
            r = c.post(path, json=payload)
            assert r.status_code == 413 and "ATLAS_API_MAX_BODY_BYTES" in r.json()["detail"], (path, r.text)
            chunked = c.post(path, content=iter([b'{"query": "RETURN 1 // ', b"x" * 1500, b"x" * 1500, b'"}']),
                             headers={"content-type": "application/json"})
            assert chunked.status_code == 413, (path, chunked.text)
        assert c.post("/cypher", json={"query": "RETURN 1 AS x"}).status_code in (401, 403)  # small bodies pass
