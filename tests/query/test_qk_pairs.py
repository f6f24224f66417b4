"""POST /graphs/{id}/qk end to end: a zoo corpus goes through the pipeline (POST /corpora, a real Celery worker),
then the same worker computes QK pairs of a head of the stored graph as an analysis job.

The identity is checked against the pipeline and against the model itself: the pairs listed, the rest and the
bias terms sum to the score, and that score and the attention probability equal what Hugging Face's own
forward pass computes for that head (query/key projections hooked, patterns from output_attentions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import torch

from service.schemas.qk import QKResultOut
from tests.pipeline.conftest import start_worker, stop_worker, wait_for
from workers.vocabulary import ids

pytestmark = pytest.mark.usefixtures("services")


@pytest.fixture(scope="module")
def zoo(settings):  # noqa: ANN001, ANN201 - ZooPaths
    from workers.zoo.build import ensure_zoo

    return ensure_zoo(settings, progress=False)


@pytest.fixture(scope="module")
def client(settings, neo4j_driver, write_key) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {write_key[1]}"}) as c:
        yield c


@pytest.fixture(scope="module")
def worker() -> Iterator[object]:
    proc = start_worker(f"qk-{time.time_ns()}", queues="gpu,cpu")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="module")
def zoo_graph(client, zoo, worker, neo4j_driver, settings) -> Iterator[dict]:  # noqa: ANN001
    """An IOI prompt of the zoo's held-out set attributed by the pipeline; yields its graph id and tokens."""
    from workers.pipeline.jobs import delete_job, graph_id_for, prompt_id_for
    from workers.store.writer import delete_graph
    from workers.zoo.build import DICTIONARY_MODEL
    from workers.zoo.corpus import read_jsonl

    tag = f"qk{time.time_ns()}"
    model_id, dset_id = f"{tag}-m", f"{tag}-d"
    assert client.post("/registry/models", json={"model_id": model_id, "path": str(zoo.models[DICTIONARY_MODEL])}
                       ).status_code == 201
    assert client.post("/registry/dictionary-sets", json={"dictionary_set_id": dset_id, "model_id": model_id,
                                                          "path": str(zoo.dictionaries)}).status_code == 201
    ex = next(e for e in read_jsonl(zoo.heldout) if e.task == "ioi")
    r = client.post("/corpora", json={"model": model_id, "dictionary_set": dset_id, "name": "qk test",
                                      "prompts": [ex.prompt], "settings": {"max_features": 60}})
    assert r.status_code == 202, r.text
    accepted = r.json()
    job = wait_for(lambda: (j := client.get(accepted["job_url"]).json())["state"] in ("complete", "complete_with_failures",
                                                                                       "cancelled") and j,
                   300, "the corpus job", every_s=0.5)
    assert job["state"] == "complete", job
    gid = graph_id_for(prompt_id_for(accepted["corpus_id"], 0))
    tokens = neo4j_driver.execute_query("MATCH (p:Prompt {prompt_id: $p}) RETURN p.tokens AS t",
                                        p=prompt_id_for(accepted["corpus_id"], 0),
                                        database_=settings.neo4j_database).records[0]["t"]
    stored = {r["n"] for r in neo4j_driver.execute_query("MATCH (n:Node {graph_id: $g}) RETURN n.node_id AS n",
                                                         g=gid, database_=settings.neo4j_database).records}
    yield {"graph_id": gid, "tokens": list(tokens), "stored": stored, "model_dir": zoo.models[DICTIONARY_MODEL]}
    delete_graph(neo4j_driver, gid, database=settings.neo4j_database)
    delete_job(neo4j_driver, accepted["job_id"], settings.neo4j_database)


@pytest.fixture(scope="module")
def hf_scores(zoo_graph) -> dict:  # noqa: ANN001
    """The model's own pre-softmax scores [layer][head, q, k] and attention patterns, from a plain HF forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(zoo_graph["model_dir"], attn_implementation="eager",
                                                 local_files_only=True).eval()
    assert model.config.model_type == "gpt2", "this reference reads GPT-2's fused c_attn projection"
    n_head, d = model.config.n_head, model.config.n_embd
    hd = d // n_head
    qkv: dict[int, torch.Tensor] = {}
    hooks = [blk.attn.c_attn.register_forward_hook(lambda _m, _i, out, k=i: qkv.__setitem__(k, out[0].detach()))
             for i, blk in enumerate(model.transformer.h)]
    with torch.no_grad():
        out = model(torch.tensor([zoo_graph["tokens"]]), output_attentions=True)
    for h in hooks:
        h.remove()
    scores = {}
    for layer, x in qkv.items():
        q = x[:, :d].reshape(-1, n_head, hd).transpose(0, 1)  # [head, pos, hd]
        k = x[:, d:2 * d].reshape(-1, n_head, hd).transpose(0, 1)
        scores[layer] = (q @ k.transpose(1, 2)).double() / math.sqrt(hd)
    return {"scores": scores, "patterns": {i: a[0].double() for i, a in enumerate(out.attentions)},
            "n_layers": len(qkv), "n_heads": n_head}


def run_qk(client, graph_id: str, body: dict) -> dict:  # noqa: ANN001
    r = client.post(f"/graphs/{graph_id}/qk", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "qk_pairs" and r.json()["status"] in ("queued", "running", "done")
    aid = r.json()["analysis_id"]
    return wait_for(lambda: (a := client.get(f"/analyses/{aid}").json())["status"] in ("done", "failed") and a,
                    300, f"analysis {aid}", every_s=0.3)


def check_head(head: dict, zoo_graph: dict, hf: dict, top_k: int) -> None:
    layer, h, qp, kp = head["layer"], head["head"], head["query_position"], head["key_position"]
    listed = sum(p["contribution"] for p in head["pairs"])
    bias = sum(head["bias_terms"].values())
    tol = 2e-4 * max(1.0, abs(head["score"]))
    # The identity: top pairs + the other pairs + the three bias cross-terms = the score.
    assert listed + head["other_pairs"] + bias == pytest.approx(head["score"], abs=tol)
    assert head["total"] == pytest.approx(head["score"], abs=tol)
    # ... and the score is the model's own.
    assert head["score"] == pytest.approx(float(hf["scores"][layer][h, qp, kp]), abs=tol)
    assert head["attention"] == pytest.approx(float(hf["patterns"][layer][h, qp, kp]), abs=1e-5)
    mags = [abs(p["contribution"]) for p in head["pairs"]]
    assert mags == sorted(mags, reverse=True) and len(head["pairs"]) == min(top_k, head["n_pairs"])
    for p in head["pairs"]:
        # Query-side nodes sit at or before the query position, key-side ones at or before the key position.
        for node, limit in ((p["query_node"], qp), (p["key_node"], kp)):
            pos = ids.parse(node).pos
            assert pos is not None and pos <= limit, (node, limit)
        assert p["query_in_graph"] == (p["query_node"] in zoo_graph["stored"])
        assert p["key_in_graph"] == (p["key_node"] in zoo_graph["stored"])


def test_qk_pairs_of_a_head_sum_to_the_models_score(client, zoo_graph, hf_scores) -> None:  # noqa: ANN001
    n = len(zoo_graph["tokens"])
    a = run_qk(client, zoo_graph["graph_id"], {"layer": 1, "head": 2, "query_position": n - 1, "key_position": 2,
                                                "top_k": 15})
    assert a["status"] == "done", a.get("error")
    result = QKResultOut.model_validate(a["result"])
    assert (result.n_layers, result.n_heads, result.n_positions) == (hf_scores["n_layers"], hf_scores["n_heads"], n)
    assert len(result.heads) == 1
    head = a["result"]["heads"][0]
    assert (head["layer"], head["head"], head["query_position"], head["key_position"]) == (1, 2, n - 1, 2)
    check_head(head, zoo_graph, hf_scores, 15)
    assert any(p["query_in_graph"] for p in head["pairs"]), "the strongest pairs include nodes of the stored circuit"


def test_qk_pairs_of_the_circuits_heads(client, zoo_graph, hf_scores) -> None:  # noqa: ANN001
    a = run_qk(client, zoo_graph["graph_id"], {"from_circuit": True, "top_k_heads": 2, "top_k": 8})
    assert a["status"] == "done", a.get("error")
    heads = QKResultOut.model_validate(a["result"]).heads
    assert len(heads) == 2 and len({(h.layer, h.head) for h in heads}) == 2
    credits = [h.credit for h in heads]
    assert all(c is not None and c > 0 for c in credits) and credits == sorted(credits, reverse=True)
    for head in a["result"]["heads"]:
        assert head["query_position"] > head["key_position"], "the credited edges cross positions"
        check_head(head, zoo_graph, hf_scores, 8)


def test_qk_request_errors(client, zoo_graph, hf_scores) -> None:  # noqa: ANN001
    gid, n = zoo_graph["graph_id"], len(zoo_graph["tokens"])
    head = {"layer": 0, "head": 0, "query_position": 3, "key_position": 1}
    no_key = client.post(f"/graphs/{gid}/qk", json=head, headers={"Authorization": ""})
    assert no_key.status_code == 401
    missing = client.post("/graphs/no-such-graph/qk", json=head)
    assert missing.status_code == 404 and "no-such-graph" in missing.json()["detail"]
    for body, field in (({"layer": 0, "head": 0, "query_position": 3}, "key_position"),
                        ({}, "layer"),
                        ({**head, "from_circuit": True}, "layer"),
                        ({**head, "key_position": 4}, "key_position"),
                        ({**head, "query_position": n}, "query_position"),
                        ({**head, "layer": hf_scores["n_layers"]}, "layer"),
                        ({**head, "top_k": 0}, "top_k"),
                        ({**head, "heads": 3}, "heads"),
                        ({"from_circuit": 0}, "from_circuit"),  # 0 is not false: JSON types are never coerced
                        ({**head, "layer": "0"}, "layer")):
        r = client.post(f"/graphs/{gid}/qk", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", field], (body, r.json())
    # What only the model knows is checked by the worker: the job fails, naming the parameter.
    a = run_qk(client, gid, {**head, "head": hf_scores["n_heads"]})
    assert a["status"] == "failed" and f"head {hf_scores['n_heads']}" in a["error"]
