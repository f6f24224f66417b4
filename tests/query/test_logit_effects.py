"""Logit effects of a feature (GET /features/{fkey}/logit-effects, workers/analysis/logit_effects.py) against the
engine's own attribution edges: for a transcoder feature of the last block at the last position the only path
to a logit is the direct one, so its edge to each top-logit target is a_f · m · effect[t], with one m (the final
norm's frozen multiplier at that position) shared by every such feature. The tiny model and dictionaries are
registered in the real Neo4j; the graph is computed by the engine and stored by the real writer."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import torch

from tests.pipeline.conftest import registered, tiny_model  # noqa: F401 - shared fixtures
from tests.query.graphs import registered_graph
from workers.analysis.logit_effects import model_logit_effects, top_effects


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def test_effects_are_the_engines_direct_edges_and_the_api_serves_them(client, registered, neo4j_driver, settings,  # noqa: ANN001, F811
                                                                      store) -> None:
    model_id, dset_id = registered
    rec, loaded = registered_graph(neo4j_driver, model_id, dset_id, "the cat sat on the mat and the dog ran to the",
                                   settings.neo4j_database)
    lin, tok = loaded.lin, loaded.tokenizer
    store([rec])
    tag = rec.graph_id

    last = max(n.pos for n in rec.nodes if n.kind == "logit")
    n_layers = 1 + max(n.layer for n in rec.nodes if n.kind == "feature")
    feats = [n for n in rec.nodes if n.kind == "feature" and n.pos == last and n.layer == n_layers - 1
             and n.dictionary.endswith(".mlp")]
    logits = [n.node_id for n in rec.nodes if n.kind == "logit"]
    token_of = {t["node_id"]: int(t["node_id"].rsplit(":t", 1)[1]) for t in rec.target["targets"]}
    assert feats and len(logits) >= 2, "the prompt should give last-block features and several top logits"
    edges = {(s, d): w for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True)}
    per_unit = []
    for f in feats:
        eff = model_logit_effects(lin.model, lin.W_U, lin.dictionaries.get(n_layers - 1, "mlp").W_dec[f.feature].detach())
        e = torch.tensor([eff[token_of[t]].item() for t in logits], dtype=torch.float64)
        w = torch.tensor([edges.get((f.node_id, t), 0.0) for t in logits], dtype=torch.float64)
        c = float((w @ e) / (e @ e))
        assert (w - c * e).abs().max().item() <= 1e-4 * w.abs().max().item(), (f.node_id, w, e)
        per_unit.append(c / f.activation)
    assert all(m > 0 for m in per_unit)
    assert max(per_unit) - min(per_unit) <= 1e-4 * max(per_unit)  # one frozen final-norm multiplier

    # The API answers the top tokens of the same effects, decoded.
    f = feats[0]
    fkey = f"{dset_id}/{f.dictionary}#{f.feature}"
    r = client.get(f"/features/{quote(fkey, safe='/')}/logit-effects", params={"k": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    eff = model_logit_effects(lin.model, lin.W_U, lin.dictionaries.get(f.layer, "mlp").W_dec[f.feature].detach())
    up, down = top_effects(eff, 5, lambda t: tok.decode([t]))
    assert out["promoted"] == [e.__dict__ for e in up] and out["suppressed"] == [e.__dict__ for e in down]
    assert (out["model_id"], out["dictionary_set"]) == (model_id, dset_id)
    values = [e["effect"] for e in out["promoted"]]
    assert values == sorted(values, reverse=True) and values[0] > 0 > out["suppressed"][0]["effect"]

    # Unknown features and unregistered dictionary sets are 404s that say so.
    missing = client.get(f"/features/{quote(dset_id, safe='')}/L9.mlp%2399/logit-effects")
    assert missing.status_code == 404 and "no feature" in missing.json()["detail"]
    other = f"unregistered-{tag}"
    store([dataclasses.replace(rec, graph_id=f"{tag}-unreg", dictionary_set=other)])
    unreg = client.get(f"/features/{quote(other, safe='')}/{f.dictionary}%23{f.feature}/logit-effects")
    assert unreg.status_code == 404 and "registered" in unreg.json()["detail"]
