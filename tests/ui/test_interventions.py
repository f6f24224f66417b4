"""Interventions from the graph view in real headless Chromium, with the real API, Neo4j and a real Celery worker:
pinned feature nodes (clicked on the canvas, pinned from their panel) are sent to POST /graphs/{id}/interventions,
the page polls the analysis and draws, per target, the frozen change, the edges' prediction and the live change,
and the live top-logit changes: exactly the analysis' result, in which frozen equals the edges' prediction."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.pipeline.conftest import worker_factory  # noqa: F401 - real Celery workers
from tests.query.graphs import registered_graph
from tests.ui.test_viewer import api_circuit, click_node, open_graph, wait_js

pytestmark = pytest.mark.usefixtures("services")


def test_pinned_features_are_intervened_on_and_the_result_drawn(browser, api_url, api, registered, neo4j_driver,  # noqa: ANN001
                                                                settings, store, write_key, worker_factory,  # noqa: F811
                                                                artifacts_dir) -> None:
    rec, _ = registered_graph(neo4j_driver, *registered, "the cat sat on the mat and the dog ran to the",
                              settings.neo4j_database)
    store([rec])
    worker_factory(queues="cpu")
    # The whole (unpruned) graph is drawn; pin the two features with the strongest direct edges into the targets.
    everything = len(rec.nodes)
    circuit = api_circuit(api, rec.graph_id, max_nodes=everything)
    targets = {t["node_id"] for t in rec.target["targets"]}
    strength: dict[str, float] = {}
    for e in circuit["edges"]:
        if e["target"] in targets and e["source"].startswith("feat:"):
            strength[e["source"]] = max(strength.get(e["source"], 0.0), abs(e["weight"]))
    feats = [{"node_id": n} for n in sorted(strength, key=lambda n: -strength[n])[:2]]
    assert len(feats) == 2
    open_graph(browser, api_url, rec.graph_id, everything)
    for n in feats:
        click_node(browser, n["node_id"])
        wait_js(browser, f"return document.querySelector('#node-panel .node-id')?.textContent === '{n['node_id']}'",
                what=f"the panel of {n['node_id']}")
        browser.find_element(By.CSS_SELECTOR, "#node-panel button.pin").click()
        wait_js(browser, f"return document.getElementById('pinned-list').textContent.includes('{n['node_id']}')",
                what=f"{n['node_id']} pinned, not {browser.execute_script('return [...window.atlas.graph.pinned]')}")
    pinned = browser.execute_script("return [...document.querySelectorAll('#pinned-list .chip')].map(a => a.textContent)")
    assert sorted(pinned) == sorted(n["node_id"] for n in feats)

    form = browser.find_element(By.ID, "intervene-form")
    Select(form.find_element(By.NAME, "mode")).select_by_value("scale")
    form.find_element(By.NAME, "value").send_keys("2")
    key_box = form.find_element(By.NAME, "api_key")
    key_box.clear()  # the tab may remember another test's key (sessionStorage)
    key_box.send_keys(write_key[1])
    form.find_element(By.TAG_NAME, "button").click()
    shown = wait_js(browser, """const b = document.getElementById('intervention-result');
        const rows = [...b.querySelectorAll('tr.intervention-target')];
        if (b.querySelector('.error')) return {error: b.textContent};
        return rows.length && {id: b.dataset.analysisId, rows: rows.map(r => [r.dataset.id, +r.dataset.frozen, +r.dataset.edges,
            r.dataset.live === '' ? null : +r.dataset.live]),
            logits: [...b.querySelectorAll('tr.logit-change')].map(r => +r.dataset.change)};""",
                    timeout=180, what="the intervention result")
    assert "error" not in shown, shown
    result = api.get(f"/analyses/{shown['id']}").json()["result"]
    assert sorted(e["node_id"] for e in result["edits"]) == sorted(pinned) and result["mode"] == "scale"
    assert shown["rows"] == [[t["node_id"], t["frozen_change"], t["from_edges"], t["live_change"]]
                             for t in result["targets"]]
    for _, frozen, from_edges, live in shown["rows"]:
        assert frozen == pytest.approx(from_edges, rel=1e-4, abs=1e-5) and live is not None
    assert shown["logits"] == [c["change"] for c in result["top_logit_changes"]]
    browser.save_screenshot(str(artifacts_dir / "graph_interventions.png"))
