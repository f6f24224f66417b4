"""GET /features?q=: feature search by key/prefix and by token, against a brute-force Python reference on
generated graphs written with the real writer (real Neo4j, the app in-process over its real ASGI stack).

Every search is scoped to the generated corpus (``corpus_id``) or its fresh dictionary set, so graphs other
tests write to the shared database cannot change the expected answer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.query.features import BadSearch, parse_feature_query
from tests.query.graphs import graph_specs, make_records
from workers.store.records import GraphRecord, NodeRow

H = hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow], database=None)


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def _matches_key(fkey: str, dictionary: str, index: int, dset: str, q: str) -> bool:
    """The documented grammar, written independently of the query layer's regexes."""
    text = q.strip()
    if text.lower().startswith("key:"):
        text = text[4:].strip()
    layer, site = dictionary[1:].split(".")
    site_form = re.fullmatch(r"(attn|mlp)/[Ll](\d+)(?:/(\d+)?)?/?", text, re.IGNORECASE)
    layer_form = re.fullmatch(r"(?:([^/#\s]+)/)?[Ll](\d+)(?:[.:/](attn|mlp))?(?:[#:/](\d+))?/?", text, re.IGNORECASE)
    if site_form:
        w_dset, w_layer, w_site, w_index = None, site_form.group(2), site_form.group(1), site_form.group(3)
    elif layer_form:
        w_dset, w_layer, w_site, w_index = layer_form.groups()
    elif re.fullmatch(r"#(\d+)", text):
        w_dset, w_layer, w_site, w_index = None, None, None, text[1:]
    else:
        return fkey.startswith(text)
    return ((w_dset is None or w_dset == dset) and (w_layer is None or int(w_layer) == int(layer))
            and (w_site is None or w_site.lower() == site) and (w_index is None or int(w_index) == index))


def ref_key_search(records: list[GraphRecord], q: str) -> list[tuple[str, int, int, float]]:
    """(fkey, n_graphs, n_instances, mean activation) ranked as documented."""
    graphs: dict[str, set[str]] = defaultdict(set)
    acts: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, int, str]] = {}
    for rec in records:
        for n in rec.nodes:
            fk = n.fkey(rec.dictionary_set)
            if fk is None:
                continue
            graphs[fk].add(rec.graph_id)
            acts[fk].append(n.activation)
            meta[fk] = (n.dictionary, n.feature, rec.dictionary_set)
    rows = [(fk, len(graphs[fk]), len(acts[fk]), sum(acts[fk]) / len(acts[fk])) for fk in graphs
            if _matches_key(fk, *meta[fk], q)]
    return sorted(rows, key=lambda r: (-r[1], -r[3], r[0]))


def ref_token_search(records: list[GraphRecord], token: str) -> list[tuple[str, int, int, float]]:
    """(fkey, graphs where it fires on the token, instances there, max activation there), ranked."""
    graphs: dict[str, set[str]] = defaultdict(set)
    acts: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        at = {n.pos for n in rec.nodes if n.kind == "embedding" and n.token.strip().lower() == token.strip().lower()}
        for n in rec.nodes:
            fk = n.fkey(rec.dictionary_set)
            if fk is not None and n.pos in at:
                graphs[fk].add(rec.graph_id)
                acts[fk].append(n.activation)
    rows = [(fk, len(graphs[fk]), len(acts[fk]), max(acts[fk])) for fk in graphs]
    return sorted(rows, key=lambda r: (-r[1], -r[3], r[0]))


def search_all(client, q: str, limit: int, **params) -> list[dict]:  # noqa: ANN001
    """Every page of a search, following next_cursor."""
    items: list[dict] = []
    cursor = None
    for _ in range(100):
        r = client.get("/features", params={"q": q, "limit": limit, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


@H
@given(specs=graph_specs(n_graphs=3), data=st.data())
def test_search_matches_brute_force(client, store, specs, data) -> None:  # noqa: ANN001
    records = store(make_records(specs))
    corpus, dset = records[0].corpus_id, records[0].dictionary_set
    queries = [f"{dset}/", f"{dset}/L1", f"{dset}/L0.mlp#2", "L1", "l0.mlp", "L1:2", "L0.mlp:3", "mlp/L1/",
               "mlp/L0/1", "MLP/l1", "#3", f"key:{dset}/L0", "L7.mlp"]
    for q in data.draw(st.lists(st.sampled_from(queries), min_size=3, max_size=5, unique=True)):
        expected = ref_key_search(records, q)
        limit = data.draw(st.integers(1, 4))
        got = search_all(client, q, limit, corpus_id=corpus, top_tokens=0)
        assert [(i["fkey"], i["n_graphs"], i["n_instances"]) for i in got] == [e[:3] for e in expected], q
        assert [i["activation"] for i in got] == pytest.approx([e[3] for e in expected]), q
        assert all(i["dictionary_set"] == dset and i["layer"] in (0, 1) and i["site"] == "mlp" for i in got)
    for q in ("cat", "token:THE", " ß ", "猫", "token:dog"):
        token = q[6:] if q.startswith("token:") else q
        expected = ref_token_search(records, token)
        got = search_all(client, q, data.draw(st.integers(1, 3)), corpus_id=corpus, top_tokens=0)
        assert [(i["fkey"], i["n_graphs"], i["n_instances"], i["activation"]) for i in got] == expected, q


def test_top_tokens_and_the_key_reading_without_a_corpus(client, store) -> None:  # noqa: ANN001
    # f1 fires on "cat" in two graphs (as "cat" and " Cat") and on "the" in one; f2 on "the" and "dog" once each.
    def rec_nodes(tokens: list[str], feats: list[tuple[int, int, float]]) -> list[NodeRow]:
        nodes = [NodeRow(f"emb:p{p}", "embedding", 0, p, activation=1.0, token=t) for p, t in enumerate(tokens)]
        nodes += [NodeRow(f"feat:L0.mlp:p{p}:f{f}", "feature", 0, p, feature=f, dictionary="L0.mlp", activation=a)
                  for p, f, a in feats]
        return nodes

    specs = [(rec_nodes(["the", "cat"], [(1, 1, 2.0), (0, 2, 0.5)]), [], []),
             (rec_nodes(["a", " Cat"], [(1, 1, 1.5)]), [], []),
             (rec_nodes(["the", "dog"], [(0, 1, 0.25), (1, 2, 0.75)]), [], [])]
    records = store(make_records(specs))
    dset = records[0].dictionary_set
    body = client.get("/features", params={"q": f"{dset}/", "top_tokens": 2}).json()
    assert body["query"] == {"mode": "key", "fkey_prefix": f"{dset}/"}
    by_key = {i["fkey"]: i for i in body["items"]}
    f1, f2 = by_key[f"{dset}/L0.mlp#1"], by_key[f"{dset}/L0.mlp#2"]
    assert [i["fkey"] for i in body["items"]] == [f1["fkey"], f2["fkey"]]  # 3 graphs before 2
    assert [(t["token"].strip().lower(), t["n"]) for t in f1["top_tokens"]] == [("cat", 2), ("the", 1)]
    assert f1["top_tokens"][0]["max_activation"] == 2.0
    assert [(t["token"], t["n"]) for t in f2["top_tokens"]] == [("dog", 1), ("the", 1)]  # tie: higher activation
    # A token search over the corpus: "cat" (any case, any surrounding space) finds f1 only, in 2 graphs.
    cat = client.get("/features", params={"q": "CAT", "corpus_id": records[0].corpus_id}).json()
    assert cat["query"] == {"mode": "token", "token": "CAT"}
    assert [(i["fkey"], i["n_graphs"], i["activation"]) for i in cat["items"]] == [(f1["fkey"], 2, 2.0)]


def test_empty_results_bad_parameters_and_routing(client, store) -> None:  # noqa: ANN001
    nothing = client.get("/features", params={"q": "no-such-token-anywhere-Ω"})
    assert nothing.status_code == 200 and nothing.json()["items"] == [] and nothing.json()["next_cursor"] is None
    assert client.get("/features", params={"q": "nodset-xyz/L0.mlp#1"}).json()["items"] == []

    for params, field in (({}, "q"), ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "x" * 201}, "q"),
                          ({"q": "token:"}, "q"), ({"q": "L1", "limit": 0}, "limit"), ({"q": "L1", "limit": 201}, "limit"),
                          ({"q": "L1", "cursor": "not-a-cursor"}, "cursor"),
                          ({"q": "L1", "top_tokens": -1}, "top_tokens")):
        r = client.get("/features", params=params)
        assert r.status_code == 422, (params, r.text)
        assert ["query", field] == r.json()["detail"][0]["loc"][:2], (params, r.json())

    # A cursor is tied to its search: reusing it for another q is refused, naming the cursor.
    page = client.get("/features", params={"q": "L0", "limit": 1}).json()
    if page["next_cursor"]:
        r = client.get("/features", params={"q": "L1", "cursor": page["next_cursor"]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
        assert "another search" in r.json()["detail"][0]["msg"]

    # /features is the search, /features/<key> the feature page, /features/<key>/activations its instances.
    with_feature = store(make_records([([NodeRow("feat:L0.mlp:p0:f5", "feature", 0, 0, feature=5, dictionary="L0.mlp",
                                                 activation=1.0)], [], [])]))
    fkey = f"{with_feature[0].dictionary_set}/L0.mlp#5"
    page = client.get(f"/features/{fkey.replace('#', '%23')}")
    assert page.status_code == 200 and page.json()["feature"]["fkey"] == fkey
    acts = client.get(f"/features/{fkey.replace('#', '%23')}/activations")
    assert acts.status_code == 200 and [a["graph_id"] for a in acts.json()["items"]] == [with_feature[0].graph_id]
    found = client.get("/features", params={"q": fkey}).json()["items"]
    assert [i["fkey"] for i in found] == [fkey]
    assert client.get("/features/").status_code == 404  # an empty key is not a feature, nor the search


def test_query_grammar() -> None:
    assert parse_feature_query("mlp/L2/").__dict__ == {"mode": "key", "fkey_prefix": None, "label": None,
                                                       "dictionary_set": None, "layer": 2, "site": "mlp", "index": None,
                                                       "token": None}
    assert (parse_feature_query("L2:123").layer, parse_feature_query("L2:123").index) == (2, 123)
    assert parse_feature_query("dset/L2.attn#7").dictionary_set == "dset"
    assert parse_feature_query("John").mode == "token"
    assert parse_feature_query("key:John").fkey_prefix == "John"
    assert parse_feature_query("token:L2").token == "L2"
    assert parse_feature_query(" Label: Name  Mover ").__dict__ == {**parse_feature_query("key:x").__dict__,
                                                                   "fkey_prefix": None, "label": "name  mover"}
    with pytest.raises(BadSearch) as exc:
        parse_feature_query(" ")
    assert exc.value.field == "q"
