"""atlas_client against the real API over HTTP (uvicorn), real Neo4j, Redis and a real Celery worker: submit a
corpus, wait with a progress bar, read a circuit (networkx / pandas), Cypher, a feature page, the global
circuit and an analysis, each checked against Neo4j or the raw API; errors carry the API's message; the
`atlas corpus submit --wait` and `atlas circuit --format neuronpedia` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import quote

import httpx
import pytest

from atlas_client import Atlas, AtlasError
from atlas_client.jobs import FINAL_ANALYSIS_STATES, FINAL_JOB_STATES

PROMPTS = ["the cat sat on the mat", {"text": "alice and bob went to the store", "targets": ["top"]},
           "the dog ran to the park and the cat"]


def test_final_states_are_the_servers() -> None:
    from typing import get_args

    from service.schemas.analyses import AnalysisOut
    from workers.pipeline.jobs import FINAL_JOB_STATES as SERVER_FINAL

    assert FINAL_JOB_STATES == SERVER_FINAL
    statuses = get_args(AnalysisOut.model_fields["status"].annotation)
    assert set(FINAL_ANALYSIS_STATES) == set(statuses) - {"queued", "running"}


def test_submit_wait_circuit_cypher_feature_global_analysis(api_url, write_key, cypher_key, registered,  # noqa: ANN001
                                                            worker_factory, neo4j_driver, capsys) -> None:
    model, dset = registered
    worker_factory()
    atlas = Atlas(api_url, write_key[1])
    job = atlas.submit_corpus(PROMPTS, model, dset, settings={"max_features": 20}, name="client test")
    assert job.accepted["n_prompts"] == 3 and job.accepted["duplicates"] == []
    status = job.wait(timeout_s=180)
    assert status["state"] == "complete" and (status["done"], status["failed"], status["total"]) == (3, 0, 3)
    bar = capsys.readouterr().err
    assert job.job_id in bar and "3/3" in bar and "complete" in bar  # the progress bar's last frame

    stored = [r["g"] for r in neo4j_driver.execute_query(
        "MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'complete' RETURN g.graph_id AS g ORDER BY g",
        c=job.corpus_id).records]
    assert job.graph_ids() == stored and len(stored) == 3

    # The circuit object is the API's answer; networkx and pandas views hold every node and edge with its weight.
    gid = stored[0]
    raw = httpx.get(f"{api_url}/graphs/{gid}/circuit", params={"max_nodes": 50}, timeout=60).json()
    c = atlas.circuit(gid, max_nodes=50)
    assert (c.graph, c.nodes, c.edges) == (raw["graph"], raw["nodes"], raw["edges"]) and c.edges
    g = c.to_networkx()
    assert set(g.nodes) == {n["node_id"] for n in raw["nodes"]}
    assert g.number_of_edges() == len(raw["edges"])
    assert all(g.edges[e["source"], e["target"]]["weight"] == e["weight"] for e in raw["edges"])
    assert g.graph["graph_id"] == gid
    df = c.to_dataframe()
    assert list(zip(df["source"], df["target"], df["weight"], strict=True)) == \
        [(e["source"], e["target"], e["weight"]) for e in raw["edges"]]
    kinds = {n["node_id"]: n["kind"] for n in raw["nodes"]}
    assert list(df["target_kind"]) == [kinds[e["target"]] for e in raw["edges"]]
    assert len(c.to_dataframe("nodes")) == len(raw["nodes"])

    # Cypher (a 'cypher' key) comes back as a DataFrame with the query's columns.
    reader = Atlas(api_url, cypher_key)
    rows = reader.cypher("MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'complete' "
                         "RETURN g.graph_id AS graph, g.n_edges AS edges ORDER BY graph", {"c": job.corpus_id})
    assert list(rows.columns) == ["graph", "edges"] and list(rows["graph"]) == stored
    assert rows.attrs["truncated_by"] is None

    # A feature of the circuit: its page lists its instances with the activations Neo4j holds.
    top = max((n for n in c.nodes if n["kind"] == "feature"), key=lambda n: n["activation"])
    page = atlas.feature(top["fkey"], job.corpus_id, top=50)
    assert page["feature"]["fkey"] == top["fkey"]
    expected = sorted((r["a"] for r in neo4j_driver.execute_query(
        "MATCH (n:Feat {fkey: $f}) MATCH (g:Graph {graph_id: n.graph_id, corpus_id: $c}) RETURN n.activation AS a",
        f=top["fkey"], c=job.corpus_id).records), reverse=True)
    assert [a["activation"] for a in page["top_activations"]] == pytest.approx(expected[:50], rel=1e-6)
    assert atlas.search_features(top["fkey"], job.corpus_id)["fkey"].iloc[0] == top["fkey"]

    # Logit effects come back as a table of the API's promoted then suppressed tokens.
    effects = atlas.logit_effects(top["fkey"], 3)
    raw_eff = httpx.get(f"{api_url}/features/{quote(top['fkey'], safe='/')}/logit-effects", params={"k": 3}, timeout=60).json()
    assert effects.to_dict("records") == [{"side": side, "token": e["token"], "token_id": e["token_id"],
                                           "effect": e["effect"]} for side in ("promoted", "suppressed")
                                          for e in raw_eff[side]]

    # A label set through the client is the circuit's, with the key's id as its author; then cleared.
    out = atlas.label_feature(top["fkey"], "client label", "a note")
    assert (out["label"], out["set_by"]) == ("client label", write_key[0].key_id)
    labelled = atlas.circuit(gid, max_nodes=50)
    assert {n["node_id"] for n in labelled.nodes if n["label"] == "client label"} == \
        {n["node_id"] for n in c.nodes if n["fkey"] == top["fkey"]}
    atlas.unlabel_feature(top["fkey"])
    assert atlas.feature(top["fkey"])["feature"]["label"] is None

    # The global circuit is GET /global/neighbours' page.
    upstream = atlas.global_circuit(top["fkey"], job.corpus_id, limit=10)
    raw_up = httpx.get(f"{api_url}/global/neighbours",
                       params={"fkey": top["fkey"], "corpus_id": job.corpus_id, "limit": 10}, timeout=60).json()["items"]
    assert upstream.to_dict("records") == raw_up

    # An analysis runs on the worker; its answer matches a direct count of feature instances per graph.
    result = atlas.analysis("recurring_features", {"graph_ids": stored, "min_graphs": 2}, timeout_s=120).result
    truth = {r["f"]: r["n"] for r in neo4j_driver.execute_query(
        "MATCH (n:Feat) WHERE n.graph_id IN $g WITH n.fkey AS f, count(DISTINCT n.graph_id) AS n WHERE n >= 2 "
        "RETURN f, n", g=stored).records}
    assert {r["fkey"]: r["n_graphs"] for r in result["features"]} == truth


def test_errors_carry_the_apis_message(api_url, write_key, registered) -> None:  # noqa: ANN001
    model, dset = registered
    with pytest.raises(AtlasError, match="an API key is required") as err:
        Atlas(api_url, key="").submit_corpus(["the cat"], model, dset)
    assert err.value.status == 401
    atlas = Atlas(api_url, write_key[1])
    with pytest.raises(AtlasError, match=r"body\.model: .*no-such-model") as err:
        atlas.submit_corpus(["the cat"], "no-such-model", dset)
    assert err.value.status == 422
    with pytest.raises(AtlasError, match=r"body\.settings\.tau") as err:
        atlas.submit_corpus(["the cat"], model, dset, settings={"tau": 0.1})
    with pytest.raises(AtlasError, match="no complete graph 'g-nope'") as err:
        atlas.circuit("g-nope")
    assert err.value.status == 404
    with pytest.raises(AtlasError, match="lacks the 'cypher' scope") as err:
        atlas.cypher("RETURN 1 AS x")
    assert err.value.status == 403
    with pytest.raises(AtlasError, match="did not answer") as err:
        Atlas("http://127.0.0.1:9", timeout_s=2).graphs()
    assert err.value.status == 0


def test_cypher_refusal_names_the_rule(api_url, cypher_key) -> None:  # noqa: ANN001
    with pytest.raises(AtlasError, match=r"\(rule no-writes\)") as err:
        Atlas(api_url, cypher_key).cypher("CREATE (n:Oops) RETURN n")
    assert err.value.status == 422


def _atlas_cli(*args: str, api_url: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ATLAS_API_URL": api_url, "ATLAS_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_submit_wait_and_circuit_neuronpedia(api_url, write_key, registered, worker_factory, tmp_path,  # noqa: ANN001
                                                 neo4j_driver) -> None:
    model, dset = registered
    worker_factory()
    corpus = tmp_path / "prompts.jsonl"
    corpus.write_text("\n".join(json.dumps(p) for p in PROMPTS[:2]) + "\n")
    done = _atlas_cli("corpus", "submit", str(corpus), "-m", model, "-d", dset, "-s", "max_features=10", "--wait",
                      api_url=api_url, key=write_key[1])
    assert done.returncode == 0, done.stderr
    assert "2 prompts queued" in done.stdout and "complete, 2 done, 0 failed of 2" in done.stdout
    assert "2/2" in done.stderr  # the progress bar
    corpus_id = done.stdout.split()[1].rstrip(",")
    graphs = Atlas(api_url).graphs(corpus_id)
    assert len(graphs) == 2
    n_feat = neo4j_driver.execute_query("MATCH (n:Feat) WHERE n.graph_id IN $g RETURN n.graph_id AS g, count(*) AS k",
                                        g=list(graphs["graph_id"])).records
    assert all(r["k"] <= 10 for r in n_feat)  # the --setting reached the job

    gid = graphs["graph_id"].iloc[0]
    out = _atlas_cli("circuit", gid, "--format", "neuronpedia", "--max-nodes", "30", api_url=api_url, key="")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == httpx.get(f"{api_url}/graphs/{gid}/circuit",
                                               params={"format": "neuronpedia", "max_nodes": 30}, timeout=60).json()

    bad = _atlas_cli("corpus", "submit", str(corpus), "-m", "no-such-model", "-d", dset, api_url=api_url,
                     key=write_key[1])
    assert bad.returncode == 1 and "body.model" in bad.stderr and "no-such-model" in bad.stderr
    missing = _atlas_cli("circuit", "g-nope", api_url=api_url, key="")
    assert missing.returncode == 1 and "404" in missing.stderr and "g-nope" in missing.stderr
