"""The corpus views in real headless Chromium against the real API, Neo4j, Redis and a real Celery worker:
the corpus and job lists show what GET /corpora and GET /jobs answer; feature search shows GET /features'
results in its order and links to feature pages; the QK panel requests the job, polls it, and shows pairs
whose sum (with the other pairs and the bias terms) is the score the API returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By

from tests.pipeline.checks import played_job
from tests.ui.test_viewer import click_node, open_graph, wait_js

pytestmark = pytest.mark.usefixtures("services")


@pytest.fixture
def jobs_in_states(neo4j_driver, settings) -> Iterator[list]:  # noqa: ANN001
    """Two jobs moved through the pipeline's own state functions: one half done, one complete."""
    from workers.pipeline import jobs
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus

    db = settings.neo4j_database
    made = []
    for k, outcomes in enumerate((("done", "failed"), ("done", "done", "done", "done"))):
        n = 4
        corpus = ValidatedCorpus("ui-model", "ui-dset", f"ui corpus {k}", {},
                                 [PromptSpec(f"ui prompt {k}.{i}") for i in range(n)], [[1, 2]] * n, [])
        made.append(played_job(neo4j_driver, corpus, outcomes, worker="ui-test", database=db))
    yield made
    for created in made:
        jobs.delete_job(neo4j_driver, created.job_id, db)


def test_corpus_and_job_lists_match_the_api(browser, api_url, api, jobs_in_states, artifacts_dir) -> None:  # noqa: ANN001
    expected = api.get("/corpora", params={"limit": 50}).json()["items"]
    browser.get(f"{api_url}/ui/#/corpora")
    rows = wait_js(browser, """const rows = [...document.querySelectorAll('#corpus-table tr.corpus-row')];
        return rows.length && rows.map(r => ({id: r.dataset.id, state: r.querySelector('.job-state')?.textContent ?? null,
            counts: r.querySelector('.counts')?.textContent ?? null, bar: r.querySelector('.bar')?.style.width ?? null}));""",
                   what="the corpus table")
    assert [r["id"] for r in rows] == [c["corpus_id"] for c in expected]
    for row, c in zip(rows, expected, strict=True):
        j = c["job"]
        assert row["state"] == (j["state"] if j else None)
        if j:
            assert row["counts"] == f"{j['done']} done, {j['failed']} failed of {j['total']}"
            pct = 100 * (j["done"] + j["failed"] + j["cancelled"]) / j["total"]
            assert float(row["bar"].rstrip("%")) == pytest.approx(pct, abs=0.05)
    half, full = jobs_in_states
    shown = {r["id"]: r for r in rows}
    assert shown[half.corpus_id]["counts"] == "1 done, 1 failed of 4" and float(shown[half.corpus_id]["bar"].rstrip("%")) == 50
    assert shown[full.corpus_id]["state"] == "complete"
    browser.save_screenshot(str(artifacts_dir / "corpora.png"))

    # The job list, filtered by state, is the API's list.
    browser.get(f"{api_url}/ui/#/job?state=running")
    ids = wait_js(browser, """const t = document.getElementById('job-table');
        return t && !t.textContent.startsWith('loading') && [...t.querySelectorAll('tr.job-row')].map(r => r.dataset.id);""",
                  what="the job table")
    assert ids == [j["job_id"] for j in api.get("/jobs", params={"state": "running", "limit": 50}).json()["items"]]
    assert half.job_id in ids and full.job_id not in ids
    browser.save_screenshot(str(artifacts_dir / "jobs_running.png"))


def shown_results(browser) -> list[str]:  # noqa: ANN001
    return wait_js(browser, """const b = document.getElementById('feature-results');
        if (!b || b.textContent.startsWith('searching')) return null;
        if (b.querySelector('.no-results')) return ['<none>'];
        if (b.querySelector('.error')) return ['<error> ' + b.textContent];
        return [...b.querySelectorAll('a.feature-result')].map(a => a.textContent);""", what="search results")


def test_feature_search_shows_the_apis_results(browser, api_url, api, stored_graph, artifacts_dir) -> None:  # noqa: ANN001
    rec = stored_graph
    # The stored (strongly pruned) graph keeps features at the last position only, whose token is "to".
    for q in (f"{rec.dictionary_set}/L1", "L0.mlp", "to"):
        expected = api.get("/features", params={"q": q, "corpus_id": rec.corpus_id, "limit": 25}).json()
        browser.get("about:blank")
        browser.get(f"{api_url}/ui/#/features?q={quote(q)}&corpus_id={quote(rec.corpus_id)}")
        got = shown_results(browser)
        assert got == [i["fkey"] for i in expected["items"]], q
        assert got, f"the stored graph should have features for {q!r}"
        if q == "to":
            browser.save_screenshot(str(artifacts_dir / "feature_search_token.png"))
    # "more" pages through with the API's cursor: the table grows by the API's second page.
    q = rec.dictionary_set + "/"
    first = api.get("/features", params={"q": q, "corpus_id": rec.corpus_id, "limit": 25}).json()
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/features?q={quote(q)}&corpus_id={quote(rec.corpus_id)}")
    assert shown_results(browser) == [i["fkey"] for i in first["items"]]
    if first["next_cursor"]:
        second = api.get("/features", params={"q": q, "corpus_id": rec.corpus_id, "limit": 25,
                                              "cursor": first["next_cursor"]}).json()
        browser.find_element(By.ID, "feature-more").click()
        n = len(first["items"]) + len(second["items"])
        both = wait_js(browser, f"""const a = [...document.querySelectorAll('a.feature-result')].map(a => a.textContent);
            return a.length === {n} && a;""", what="the second page")
        assert both == [i["fkey"] for i in first["items"] + second["items"]]
    # A result opens its feature page.
    top = first["items"][0]["fkey"]
    browser.find_element(By.CSS_SELECTOR, "a.feature-result").click()
    text = wait_js(browser, """const b = document.getElementById('feature-box');
        return b && !b.textContent.startsWith('loading') && document.querySelector('h2 code').textContent;""")
    assert text == top
    browser.save_screenshot(str(artifacts_dir / "feature_search_then_page.png"))
    # Nothing found: said so, no table.
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/features?q={quote('no-such-token-Ω')}")
    assert shown_results(browser) == ["<none>"]


@pytest.fixture(scope="module")
def qk_setup(neo4j_driver, redis_client, settings) -> Iterator[dict]:  # noqa: ANN001
    """The zoo's model and dictionaries registered, one graph of an IOI prompt written by the real writer, a real
    worker and a write key. (The zoo, not a random model: its attention SAEs carry cross-position edges, so the
    graph has heads for "the circuit's heads".)"""
    import torch

    from service.auth import create_key, delete_key
    from tests.pipeline.conftest import start_worker, stop_worker
    from workers.engine.attribution import attribute
    from workers.engine.pruning import prune
    from workers.pipeline import registry
    from workers.pipeline.compute import ModelCache
    from workers.store.from_engine import graph_to_record
    from workers.store.writer import delete_graph, write_graph
    from workers.zoo.build import DICTIONARY_MODEL, ensure_zoo

    torch.set_num_threads(1)
    db = settings.neo4j_database
    tag = f"uiqk{time.time_ns()}"
    zoo = ensure_zoo(settings, progress=False)
    model = registry.register_model(neo4j_driver, f"{tag}-m", zoo.models[DICTIONARY_MODEL], db)
    dset = registry.register_dictionary_set(neo4j_driver, f"{tag}-d", zoo.dictionaries, model.model_id, db)
    loaded = ModelCache().get(model, dset)
    tokens = loaded.tokenizer("when Mary and John went to the store , John gave a drink to")["input_ids"]
    g = attribute(loaded.lin, tokens, None, tokenizer=loaded.tokenizer)
    # Pruned like the pipeline's graphs, so nodes carry the influence the graph view ranks them by.
    rec = graph_to_record(g, graph_id=f"{tag}-g", prompt_id=f"{tag}-p", corpus_id=f"{tag}-c", model=model.model_id,
                          dictionary_set=dset.dictionary_set_id, pruned=prune(g))
    write_graph(neo4j_driver, rec, database=db)
    key, plain = create_key(redis_client, "ui-qk", ("write",))
    worker = start_worker(f"{tag}-w", queues="gpu,cpu")
    try:
        yield {"graph_id": rec.graph_id, "n_tokens": len(tokens), "key": plain}
    finally:
        stop_worker(worker)
        delete_graph(neo4j_driver, rec.graph_id, database=db)
        delete_key(redis_client, key.key_id)


def shown_heads(browser) -> list[dict]:  # noqa: ANN001
    try:
        return _shown_heads(browser)
    except AssertionError as exc:
        text = browser.execute_script("return document.getElementById('qk-result')?.textContent")
        raise AssertionError(f"{exc}; the page says: {text!r}") from None


def _shown_heads(browser) -> list[dict]:  # noqa: ANN001
    return wait_js(browser, """const out = document.getElementById('qk-result');
        if (!out) return null;
        if (out.querySelector('.error')) return [{error: out.textContent}];
        const heads = [...out.querySelectorAll('.qk-head')];
        if (!heads.length) return null;
        return heads.map(h => ({layer: +h.dataset.layer, head: +h.dataset.head, score: +h.dataset.score,
            pairs: [...h.querySelectorAll('tr.qk-pair')].map(r => [r.cells[0].textContent, r.cells[1].textContent, +r.dataset.v]),
            terms: [...h.querySelectorAll('tr.qk-pair, tr.qk-rest, tr.qk-bias')].map(r => +r.dataset.v)}));""",
                   timeout=120, what="the QK result")


def check_against_api(api, browser, heads: list[dict]) -> list[dict]:  # noqa: ANN001
    aid = browser.execute_script("return document.getElementById('qk-result').dataset.analysisId")
    result = api.get(f"/analyses/{aid}").json()
    assert result["status"] == "done"
    assert len(heads) == len(result["result"]["heads"])
    for shown, h in zip(heads, result["result"]["heads"], strict=True):
        assert "error" not in shown, shown
        assert (shown["layer"], shown["head"], shown["score"]) == (h["layer"], h["head"], h["score"])
        assert shown["pairs"] == [[p["query_node"], p["key_node"], p["contribution"]] for p in h["pairs"]]
        # The rows shown (top pairs, the other pairs, three bias terms) sum to the API's score.
        assert len(shown["terms"]) == len(h["pairs"]) + 1 + 3
        assert sum(shown["terms"]) == pytest.approx(h["score"], abs=2e-4 * max(1.0, abs(h["score"])))
    return result["result"]["heads"]


def test_qk_panel_shows_pairs_summing_to_the_score(browser, api_url, api, qk_setup, artifacts_dir) -> None:  # noqa: ANN001
    gid, n = qk_setup["graph_id"], qk_setup["n_tokens"]
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/qk?graph_id={quote(gid)}&layer=1&head=2&query_position={n - 1}&key_position=3&top_k=6")
    wait_js(browser, "return document.getElementById('qk-form')", what="the QK form")
    browser.find_element(By.CSS_SELECTOR, "#qk-form input[name=api_key]").send_keys(qk_setup["key"])
    browser.find_element(By.CSS_SELECTOR, "#qk-form button").click()
    heads = shown_heads(browser)
    [h] = check_against_api(api, browser, heads)
    assert (h["layer"], h["head"], h["query_position"], h["key_position"]) == (1, 2, n - 1, 3)
    assert len(h["pairs"]) == 6
    browser.save_screenshot(str(artifacts_dir / "qk_head.png"))

    # From a node's panel in the graph view: the link to the QK pairs of the circuit's heads (the key is kept
    # for this tab, so the request goes straight through).
    view = open_graph(browser, api_url, gid, 30)
    assert view["nodes"] > 0
    feats = browser.execute_script("return window.atlas.graph.circuit.nodes.filter(n => n.kind === 'feature').map(n => n.node_id)")
    click_node(browser, feats[0])
    wait_js(browser, "return !document.getElementById('node-panel').hidden", what="the node panel")
    browser.find_element(By.CSS_SELECTOR, "#node-panel a.qk-circuit").click()
    wait_js(browser, "const f = document.getElementById('qk-form'); return f && f.from_circuit.checked", what="the QK form")
    browser.find_element(By.CSS_SELECTOR, "#qk-form button").click()
    heads = shown_heads(browser)
    assert len(heads) == 3
    check_against_api(api, browser, heads)
    browser.save_screenshot(str(artifacts_dir / "qk_circuit_heads.png"))

    # From an attention edge: "QK" next to an input from an earlier position opens the form for that position pair.
    view = open_graph(browser, api_url, gid, 60)
    target = browser.execute_script("""const c = window.atlas.graph.circuit;
        const pos = new Map(c.nodes.map(n => [n.node_id, n.pos]));
        const e = c.edges.filter(e => pos.get(e.source) != null && pos.get(e.source) < pos.get(e.target))
            .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight))[0];
        return e && {node: e.target, q: pos.get(e.target)};""")
    assert target, "the zoo graph's circuit has a cross-position edge"
    click_node(browser, target["node"])
    wait_js(browser, "return document.querySelector('#node-panel a.qk-link')", what="a QK link in the node panel")
    link = browser.find_element(By.CSS_SELECTOR, "#node-panel a.qk-link")
    source = link.find_element(By.XPATH, "preceding-sibling::a").text
    link.click()
    form = wait_js(browser, """const f = document.getElementById('qk-form');
        return f && {graph: f.graph_id.value, q: f.query_position.value, k: f.key_position.value};""")
    source_pos = int(source.split(":p")[1].split(":")[0])
    assert form == {"graph": gid, "q": str(target["q"]), "k": str(source_pos)}

    # A request the API refuses shows its reason (the field it names), not an empty table.
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/qk?graph_id={quote(gid)}&layer=1&head=0&query_position=2&key_position=5")
    wait_js(browser, "return document.getElementById('qk-form')")
    browser.find_element(By.CSS_SELECTOR, "#qk-form button").click()
    [err] = shown_heads(browser)
    assert "422" in err["error"] and "key_position" in err["error"]
