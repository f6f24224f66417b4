"""The feature page and the graph list in real headless Chromium against the real API and Neo4j: every context
token is shaded by the feature's activation the API reports there, the activation histogram has the API's bars,
and the graph list shows each graph's prompt text and targets and filters by corpus, model and text."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from tests.query.graphs import registered_graph
from tests.ui.test_viewer import wait_js

pytestmark = pytest.mark.usefixtures("services")


@pytest.fixture
def spread_feature(store) -> tuple[str, str]:  # noqa: ANN001
    """(fkey, corpus_id) of a feature active at three positions of one stored prompt (and in a second graph)."""
    from workers.store.records import GraphRecord, NodeRow

    tag = uuid.uuid4().hex[:8]
    words = ["When", "Mary", "and", "John", "went", "to", "the", "store"]
    recs = []
    for g, acts in enumerate(({1: 0.5, 3: 2.0, 4: 1.0}, {6: 1.5})):
        nodes = [NodeRow(f"emb:p{p}", "embedding", 0, p, activation=1.0, token=w) for p, w in enumerate(words)]
        nodes += [NodeRow(f"feat:L0.mlp:p{p}:f5", "feature", 0, p, feature=5, dictionary="L0.mlp", activation=a,
                          influence=0.1) for p, a in acts.items()]
        nodes.append(NodeRow("logit:p7:t3", "logit", 1, 7, activation=1.0))
        recs.append(GraphRecord(graph_id=f"ui-fp-{tag}-{g}", prompt_id=f"ui-fp-p-{tag}-{g}", corpus_id=f"ui-fp-{tag}",
                                dictionary_set=f"ui-fp-d-{tag}", model="m", nodes=nodes,
                                edge_src=[f"feat:L0.mlp:p{p}:f5" for p in acts], edge_dst=["logit:p7:t3"] * len(acts),
                                edge_w=[0.25] * len(acts), provenance={"token_strings": words, "n_layers": 1}))
    store(recs)
    return f"ui-fp-d-{tag}/L0.mlp#5", f"ui-fp-{tag}"


def test_feature_page_shades_context_and_draws_the_histogram(browser, api_url, api, spread_feature,  # noqa: ANN001
                                                             artifacts_dir) -> None:
    fkey, corpus = spread_feature
    page = api.get(f"/features/{quote(fkey, safe='/')}", params={"corpus_id": corpus, "top": 12,
                                                               "neighbours": 10, "before": 10, "after": 4}).json()
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/feature/{quote(fkey, safe='')}?corpus_id={quote(corpus)}")
    shown = wait_js(browser, r"""const rows = [...document.querySelectorAll('#top-activations tr.activation-row')];
        const svg = document.querySelector('#feature-box svg.histogram');
        return rows.length && svg && {
          rows: rows.map(r => [...r.querySelectorAll('.ctx-token')].map(t => ({text: t.textContent, a: t.dataset.activation,
                 peak: t.classList.contains('peak'), alpha: ((c) => c.length === 4 ? +c[3] : 1)(getComputedStyle(t).backgroundColor.replace(/[^\d.,]/g, '').split(','))}))),
          bars: [...svg.querySelectorAll('rect.bar')].map(b => [+b.dataset.count, +b.getAttribute('height')]),
          density: document.querySelector('#feature-box .density').textContent};""", what="the feature page")
    top = max(a["activation"] for a in page["top_activations"])
    assert len(shown["rows"]) == len(page["top_activations"])
    shaded = 0
    for row, act in zip(shown["rows"], page["top_activations"], strict=True):
        assert [t["text"] for t in row] == [c["token"] for c in act["context"]]
        for t, c in zip(row, act["context"], strict=True):
            assert t["a"] == ("" if c["activation"] is None else str(c["activation"])) or \
                float(t["a"]) == pytest.approx(c["activation"])
            assert t["alpha"] == pytest.approx(0 if c["activation"] is None else c["activation"] / top, abs=2e-3)
            assert t["peak"] == (c["pos"] == act["pos"])
            shaded += c["activation"] is not None and c["pos"] != act["pos"]
    assert shaded == 6  # the first graph's three instances each see the other two
    assert len(page["top_activations"]) == 4 and page["histogram"]["n_tokens"] == 16
    hist = page["histogram"]
    assert [c for c, _ in shown["bars"]] == hist["counts"] and sum(hist["counts"]) == hist["n_instances"] > 0
    tallest = max(h for _, h in shown["bars"])
    for c, h in shown["bars"]:
        assert h == pytest.approx(tallest * c / max(hist["counts"]), abs=0.02)
    assert f"over {hist['n_tokens']} tokens" in shown["density"]
    browser.save_screenshot(str(artifacts_dir / "feature_page_plots.png"))


def test_graph_list_shows_prompts_and_filters(browser, api_url, api, stored_graph, neo4j_driver, settings,  # noqa: ANN001
                                              artifacts_dir) -> None:
    rec = stored_graph
    prompt = rec.provenance["prompt"]

    def listed(**filters: str) -> list[list[str]]:
        browser.get("about:blank")
        query = "&".join(f"{k}={quote(v)}" for k, v in filters.items())
        browser.get(f"{api_url}/ui/#/graphs?{query}")
        return wait_js(browser, """const t = document.getElementById('graph-table');
            if (!t || t.textContent.startsWith('loading')) return null;
            if (t.querySelector('.no-results')) return ['none'];
            return [...t.querySelectorAll('tr.graph-row')].map(r => [r.dataset.id, r.querySelector('.prompt-text').textContent,
                                                                     r.querySelector('.targets').textContent]);""",
                       what="the graph list")

    api_rows = api.get("/graphs", params={"corpus_id": rec.corpus_id}).json()["items"]
    assert listed(corpus_id=rec.corpus_id) == [[g["graph_id"], g["prompt_text"], ", ".join(g["targets"])]
                                               for g in api_rows]
    assert api_rows[0]["prompt_text"] == prompt and api_rows[0]["targets"]
    browser.save_screenshot(str(artifacts_dir / "graph_list.png"))
    assert listed(corpus_id=rec.corpus_id, model="no-such-model") == ["none"]
    assert [r[0] for r in listed(corpus_id=rec.corpus_id, model=rec.model)] == [rec.graph_id]
    # Text filters read the graph's Prompt node (the pipeline makes one): give this graph one, as it would.
    neo4j_driver.execute_query("CREATE (:Prompt {prompt_id: $p, text: $t})", p=rec.prompt_id, t=prompt,
                               database_=settings.neo4j_database)
    try:
        assert [r[0] for r in listed(corpus_id=rec.corpus_id, text="GAVE A DRINK")] == [rec.graph_id]
        assert listed(corpus_id=rec.corpus_id, text="zebra") == ["none"]
    finally:
        neo4j_driver.execute_query("MATCH (p:Prompt {prompt_id: $p}) DELETE p", p=rec.prompt_id,
                                   database_=settings.neo4j_database)


def test_feature_page_draws_the_logit_effects(browser, api_url, api, registered, neo4j_driver, settings, store,  # noqa: ANN001
                                              stored_graph, artifacts_dir) -> None:
    rec, _ = registered_graph(neo4j_driver, *registered, "the cat sat on the mat and the", settings.neo4j_database)
    store([rec])
    feat = max((n for n in rec.nodes if n.kind == "feature"), key=lambda n: n.activation)
    fkey = feat.fkey(rec.dictionary_set)
    expected = api.get(f"/features/{quote(fkey, safe='/')}/logit-effects", params={"k": 10}).json()
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/feature/{quote(fkey, safe='')}")
    shown = wait_js(browser, """const b = document.getElementById('logit-effects');
        if (!b || b.textContent.startsWith('loading')) return null;
        const rows = (cls) => [...b.querySelectorAll(`table.logit-${cls} tr.logit-row`)].map(r =>
            [r.querySelector('.token').textContent, +r.dataset.effect, parseFloat(r.querySelector('.effect-bar').style.width)]);
        return {pos: rows('pos'), neg: rows('neg')};""", what="the logit effects")
    top = max(abs(e["effect"]) for e in expected["promoted"] + expected["suppressed"])
    for side, key in (("pos", "promoted"), ("neg", "suppressed")):
        assert [(t, v) for t, v, _ in shown[side]] == [(e["token"], e["effect"]) for e in expected[key]]
        assert [w for _, _, w in shown[side]] == pytest.approx([100 * abs(e["effect"]) / top for e in expected[key]],
                                                               abs=0.06)
    browser.save_screenshot(str(artifacts_dir / "feature_logit_effects.png"))

    # A feature whose dictionary set is not registered says why instead of drawing anything.
    other = next(n for n in stored_graph.nodes if n.kind == "feature").fkey(stored_graph.dictionary_set)
    browser.get(f"{api_url}/ui/#/feature/{quote(other, safe='')}")
    err = wait_js(browser, "const e = document.querySelector('#logit-effects .error'); return e && e.textContent")
    assert "404" in err and "registered" in err
