"""Feature labels over HTTP (the app in-process, real Neo4j): a write key labels a feature, the label is stored on
the Feature with the key's id and the time, and shows in circuits (with a new ETag), the Neuronpedia export
(clerp), the feature page and feature search; bad requests are 4xx and write nothing; clearing removes it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.query.graphs import make_records
from tests.query.test_api import bearer, small_graph


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def _feature(driver, fkey: str) -> dict:  # noqa: ANN001
    return dict(driver.execute_query("MATCH (f:Feature {fkey: $f}) RETURN properties(f) AS p", f=fkey).records[0]["p"])


def test_label_is_stored_with_its_author_and_shown_everywhere(client, store, neo4j_driver, write_key, settings) -> None:  # noqa: ANN001
    rec = store(make_records(small_graph()))[0]
    fkey, other = f"{rec.dictionary_set}/L0.mlp#3", f"{rec.dictionary_set}/L1.mlp#1"
    url = f"/features/{quote(fkey, safe='/')}/label"
    key, plain = write_key
    text = f"cat detector {uuid.uuid4().hex[:8]}"
    unlabelled = _feature(neo4j_driver, fkey)
    links = neo4j_driver.execute_query("MATCH (f:Feature {fkey: $f})-[r]-(x) RETURN type(r) AS t, labels(x) AS x "
                                       "ORDER BY t", f=fkey).records

    # Bad requests: 4xx, nothing written.
    assert client.put(url, json={"label": text}).status_code == 401
    blank = client.put(url, json={"label": "   "}, headers=bearer(plain))
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "label"]
    assert client.put(url, json={"label": "x" * 121}, headers=bearer(plain)).status_code == 422
    assert client.put(url, json={"label": text, "colour": "red"}, headers=bearer(plain)).status_code == 422
    missing = client.put(f"/features/{rec.dictionary_set}/L9.mlp%2399/label", json={"label": text},
                         headers=bearer(plain))
    assert missing.status_code == 404 and "no feature" in missing.json()["detail"]
    assert _feature(neo4j_driver, fkey) == unlabelled

    circuit_url = f"/graphs/{rec.graph_id}/circuit"
    first = client.get(circuit_url)
    assert first.headers["cache-control"] == "public, max-age=0, must-revalidate"

    before = time.time()
    r = client.put(url, json={"label": f"  {text} ", "note": "fires on 'cat'"}, headers=bearer(plain))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["fkey"], out["label"], out["note"], out["set_by"]) == (fkey, text, "fires on 'cat'", key.key_id)
    assert before <= out["set_at"] <= time.time()
    stored = _feature(neo4j_driver, fkey)
    assert (stored["label"], stored["label_note"], stored["label_by"], stored["label_at"]) == \
        (text, "fires on 'cat'", key.key_id, out["set_at"])
    assert neo4j_driver.execute_query("MATCH (f:Feature {fkey: $f})-[r]-(x) RETURN type(r) AS t, labels(x) AS x "
                                      "ORDER BY t", f=fkey).records == links  # properties, no link to a key

    # The circuit shows it on the feature's node only, under a new ETag (the old one no longer answers 304).
    again = client.get(circuit_url, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 200 and again.headers["etag"] != first.headers["etag"]
    labels = {n["node_id"]: n["label"] for n in again.json()["nodes"]}
    assert labels == {n.node_id: (text if n.node_id == "feat:L0.mlp:p1:f3" else None) for n in rec.nodes}
    assert client.get(circuit_url, headers={"If-None-Match": again.headers["etag"]}).status_code == 304
    clerps = {n["node_id"]: n["clerp"] for n in client.get(circuit_url, params={"format": "neuronpedia"}).json()["nodes"]}
    assert clerps["feat:L0.mlp:p1:f3"] == text and clerps["feat:L1.mlp:p1:f1"] == other

    page = client.get(f"/features/{quote(fkey, safe='/')}").json()["feature"]
    assert (page["label"], page["note"], page["label_by"], page["label_at"]) == (text, "fires on 'cat'", key.key_id,
                                                                                 out["set_at"])
    hits = client.get("/features", params={"q": f"{rec.dictionary_set}/"}).json()["items"]
    assert {h["fkey"]: h["label"] for h in hits} == {fkey: text, other: None}
    found = client.get("/features", params={"q": f"label:{text.upper()}"}).json()
    assert [h["fkey"] for h in found["items"]] == [fkey] and found["query"] == {"mode": "key", "label": text}
    token_hits = client.get("/features", params={"q": "token:cat", "corpus_id": rec.corpus_id}).json()["items"]
    assert {h["fkey"]: h["label"] for h in token_hits}.get(fkey) == text

    # Clearing: every view is back to no label; the circuit's ETag changes again.
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers=bearer(plain)).status_code == 204
    cleared = client.get(circuit_url, headers={"If-None-Match": again.headers["etag"]})
    assert cleared.status_code == 200 and all(n["label"] is None for n in cleared.json()["nodes"])
    assert client.get(f"/features/{quote(fkey, safe='/')}").json()["feature"]["label"] is None
    assert client.get("/features", params={"q": f"label:{text}"}).json()["items"] == []
    assert client.delete(f"/features/{rec.dictionary_set}/L9.mlp%2399/label", headers=bearer(plain)).status_code == 404
