"""The circuit viewer in real headless Chromium against the real API and Neo4j.

What the picture shows must be what the API serves: node and edge counts drawn on the canvas (counted by the
renderer's draw loop) and the ids in the SVG export equal the circuit endpoint's answer for the same pruning;
moving the pruning slider (keyboard, as a user would) re-queries and changes the counts; clicking a node opens
its panel with its strongest inputs as the API's edges rank them; supernodes merge nodes and sum edges.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from urllib.parse import quote

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from service.ui import STATIC_DIR
from service.ui.schema import ui_schema
from tests.pipeline.checks import played_job

pytestmark = pytest.mark.usefixtures("services")


def wait_js(browser, script: str, timeout: float = 20.0, what: str = ""):  # noqa: ANN001, ANN201
    """Poll a JS expression until truthy; return its value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = browser.execute_script(script)
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or script!r} (last value {last!r})")


def graph_loaded(browser, max_nodes: int) -> dict:  # noqa: ANN001
    """Wait until the graph view shows the circuit for max_nodes; return its status numbers."""
    return wait_js(browser, f"""
        const v = window.atlas && window.atlas.graph;
        if (!v || !v.circuit || v.el.dataset.loading || v.circuit.pruning.max_nodes !== {max_nodes}) return null;
        const s = v.el.querySelector('#graph-status').dataset;
        return {{nodes: +s.renderedNodes, edges: +s.renderedEdges, apiNodes: +s.apiNodes, apiEdges: +s.apiEdges}};
    """, what=f"the circuit with max_nodes={max_nodes}")


def api_circuit(api, graph_id: str, **params) -> dict:  # noqa: ANN001
    r = api.get(f"/graphs/{graph_id}/circuit", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def svg_ids(browser) -> tuple[list[str], int]:  # noqa: ANN001
    """Node ids and edge count in the view's SVG export, parsed by the browser's own XML parser."""
    return browser.execute_script("""
        const doc = new DOMParser().parseFromString(window.atlas.graph.exportSVG(), 'image/svg+xml');
        if (doc.querySelector('parsererror')) return null;
        return [[...doc.querySelectorAll('g.node')].map(g => g.dataset.id), doc.querySelectorAll('line.edge').length];
    """)


def click_node(browser, node_id: str, shift: bool = False) -> None:  # noqa: ANN001
    """A real mouse click on the node's position on the canvas."""
    # Let pending layout work (a panel opening refits the view) finish: two animation frames.
    browser.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done));")
    pos = browser.execute_script("return window.atlas.graph.nodeClientPosition(arguments[0])", node_id)
    assert pos is not None, f"{node_id} is not drawn"
    overlay = browser.find_element(By.CSS_SELECTOR, "canvas.graph-overlay")
    rect = overlay.rect
    dx = pos["x"] - (rect["x"] + rect["width"] / 2)
    dy = pos["y"] - (rect["y"] + rect["height"] / 2)
    chain = ActionChains(browser).move_to_element_with_offset(overlay, round(dx), round(dy))
    chain = chain.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT) if shift else chain.click()
    chain.perform()


def hover_node(browser, node_id: str) -> None:  # noqa: ANN001
    """A real mouse move onto the node's position on the canvas."""
    pos = browser.execute_script("return window.atlas.graph.nodeClientPosition(arguments[0])", node_id)
    assert pos is not None, f"{node_id} is not drawn"
    overlay = browser.find_element(By.CSS_SELECTOR, "canvas.graph-overlay")
    rect = overlay.rect
    ActionChains(browser).move_to_element_with_offset(
        overlay, round(pos["x"] - rect["x"] - rect["width"] / 2), round(pos["y"] - rect["y"] - rect["height"] / 2)
    ).perform()


def open_graph(browser, api_url: str, graph_id: str, max_nodes: int) -> dict:  # noqa: ANN001
    # A fresh page each time: navigating to the same URL with only a fragment would keep the old view's state.
    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/graph/{quote(graph_id)}?max_nodes={max_nodes}")
    return graph_loaded(browser, max_nodes)


def test_assets_are_served_and_small(api) -> None:  # noqa: ANN001
    r = api.get("/ui", follow_redirects=True)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script type="module" src="app.js">' in r.text
    js = api.get("/ui/graph/render.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert api.get("/ui/../app.py").status_code == 404
    assert api.get("/ui/%2e%2e/routes.py").status_code == 404
    assert api.get("/ui/nope.js").status_code == 404
    schema = api.get("/ui/schema.json")  # the vocabulary the viewer draws with (service/ui/schema.py)
    assert schema.status_code == 200 and schema.json() == ui_schema()
    total = sum(p.stat().st_size for p in STATIC_DIR.rglob("*") if p.is_file())
    assert total < 300_000, f"UI assets are {total} bytes; the budget is 300 KB"


def test_graph_matches_api_and_slider_requeries(browser, api_url, api, stored_graph, artifacts_dir) -> None:  # noqa: ANN001
    gid = stored_graph.graph_id
    shown = open_graph(browser, api_url, gid, 40)
    expected = api_circuit(api, gid, max_nodes=40)
    assert (shown["nodes"], shown["edges"]) == (len(expected["nodes"]), len(expected["edges"]))
    assert (shown["apiNodes"], shown["apiEdges"]) == (shown["nodes"], shown["edges"])
    ids, n_edges = svg_ids(browser)
    assert sorted(ids) == sorted(n["node_id"] for n in expected["nodes"])
    assert n_edges == len(expected["edges"])
    # The prompt's tokens are drawn along the bottom: the SVG export carries one label per position.
    tokens = browser.execute_script("""
        const doc = new DOMParser().parseFromString(window.atlas.graph.exportSVG(), 'image/svg+xml');
        return [...doc.querySelectorAll('text.token')].map(t => t.textContent);""")
    assert tokens == stored_graph.provenance["token_strings"]
    # Something is really painted: a good share of the base canvas is not blank.
    painted = browser.execute_script("""
        const c = document.querySelector('canvas.graph-base');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return n / (c.width * c.height);""")
    assert painted > 0.01
    browser.save_screenshot(str(artifacts_dir / "graph_40.png"))

    # Slider to its minimum with the keyboard: only the always-kept kinds remain (max_nodes=0).
    slider = browser.find_element(By.ID, "prune-nodes")
    slider.send_keys(Keys.HOME)
    low = graph_loaded(browser, 0)
    expected_low = api_circuit(api, gid, max_nodes=0)
    assert (low["nodes"], low["edges"]) == (len(expected_low["nodes"]), len(expected_low["edges"]))
    assert low["nodes"] < shown["nodes"]
    assert "max_nodes=0" in browser.current_url
    browser.save_screenshot(str(artifacts_dir / "graph_min.png"))

    # ... and to its maximum (the graph's node count): everything stored is drawn.
    slider.send_keys(Keys.END)
    top = int(browser.execute_script("return +document.getElementById('prune-nodes').max"))
    assert top == len(stored_graph.nodes)
    high = graph_loaded(browser, top)
    expected_high = api_circuit(api, gid, max_nodes=top)
    assert (high["nodes"], high["edges"]) == (len(expected_high["nodes"]), len(expected_high["edges"]))
    assert high["nodes"] == len(stored_graph.nodes) > shown["nodes"]
    assert high["edges"] == len(stored_graph.edge_w)
    browser.save_screenshot(str(artifacts_dir / "graph_all.png"))


def test_hover_and_click_open_the_node_panel(browser, api_url, api, stored_graph, artifacts_dir) -> None:  # noqa: ANN001
    gid = stored_graph.graph_id
    open_graph(browser, api_url, gid, 30)
    circuit = api_circuit(api, gid, max_nodes=30)
    feats = sorted((n for n in circuit["nodes"] if n["kind"] == "feature"), key=lambda n: -(n["influence"] or 0))
    node = feats[0]
    # Hover: the tooltip names the node and shows its activation and influence.
    hover_node(browser, node["node_id"])
    tip = browser.find_element(By.ID, "tooltip")
    wait_js(browser, "return !document.getElementById('tooltip').hidden", what="the tooltip")
    assert node["node_id"] in tip.text and "activation" in tip.text and "influence" in tip.text

    click_node(browser, node["node_id"])
    panel = browser.find_element(By.ID, "node-panel")
    wait_js(browser, "return !document.getElementById('node-panel').hidden", what="the node panel")
    assert panel.find_element(By.CSS_SELECTOR, ".node-id").text == node["node_id"]
    incoming = sorted((e for e in circuit["edges"] if e["target"] == node["node_id"]), key=lambda e: -abs(e["weight"]))
    listed = [a.text for a in panel.find_elements(By.CSS_SELECTOR, "ol.inputs a")]
    assert listed == [e["source"] for e in incoming[:12]]
    link = panel.find_element(By.CSS_SELECTOR, "a.feature-link").get_attribute("href")
    assert link.split("#", 1)[1].startswith(f"/feature/{quote(node['fkey'], safe='')}")
    browser.save_screenshot(str(artifacts_dir / "node_panel.png"))

    # An input in the panel selects that node (its panel replaces this one).
    if listed:
        panel.find_element(By.CSS_SELECTOR, "ol.inputs a").click()
        wait_js(browser, f"return document.querySelector('#node-panel .node-id').textContent === {json.dumps(listed[0])}")


def test_pins_supernodes_and_neuronpedia_export(browser, api_url, api, stored_graph) -> None:  # noqa: ANN001
    gid = stored_graph.graph_id
    before = open_graph(browser, api_url, gid, 30)
    circuit = api_circuit(api, gid, max_nodes=30)
    feats = sorted(n["node_id"] for n in circuit["nodes"] if n["kind"] == "feature")
    a, b = feats[0], feats[1]
    click_node(browser, a)
    wait_js(browser, "return !document.getElementById('node-panel').hidden")
    browser.find_element(By.CSS_SELECTOR, "#node-panel button.pin").click()
    wait_js(browser, f"return document.getElementById('pinned-list').textContent.includes({json.dumps(a)})")

    # Choose the members: `a` with its panel's button, `b` with a shift-click on the canvas.
    click_node(browser, a)
    wait_js(browser, f"return document.querySelector('#node-panel .node-id').textContent === {json.dumps(a)}")
    browser.find_element(By.CSS_SELECTOR, "#node-panel button.choose").click()
    click_node(browser, b, shift=True)
    wait_js(browser, "return document.getElementById('chosen-count').textContent === '2'",
            what=f"two chosen nodes, not {browser.execute_script('return [...window.atlas.graph.chosen]')}")
    browser.find_element(By.ID, "group-name").send_keys("pair")
    browser.find_element(By.ID, "group").click()
    after = wait_js(browser, """const s = document.getElementById('graph-status').dataset;
        return document.getElementById('supernode-list').textContent.includes('super:pair') &&
               {nodes: +s.renderedNodes, edges: +s.renderedEdges};""")
    # Two members become one node; edges re-attach to it, parallel ones are summed, internal ones vanish.
    rename = {a: "S", b: "S"}
    merged: dict[tuple[str, str], float] = defaultdict(float)
    for e in circuit["edges"]:
        s, t = rename.get(e["source"], e["source"]), rename.get(e["target"], e["target"])
        if s != t:
            merged[(s, t)] += e["weight"]
    assert after == {"nodes": before["nodes"] - 1, "edges": len(merged)}

    doc = browser.execute_async_script("""const done = arguments[arguments.length - 1];
        window.atlas.graph.exportNeuronpedia().then(done, e => done({error: String(e)}));""")
    assert "error" not in doc, doc
    assert doc["metadata"]["schema_version"] == 1
    assert doc["qParams"]["pinnedIds"] == [a]
    assert doc["qParams"]["supernodes"] == [["pair", a, b]]
    assert len(doc["nodes"]) == len(circuit["nodes"]) and len(doc["links"]) == len(circuit["edges"])
    png = browser.execute_script("return window.atlas.graph.exportPNG()")
    assert png.startswith("data:image/png;base64,") and len(png) > 5_000

    # A supernode's panel pins all its members at once (what the interventions form sends).
    assert browser.execute_script("return window.atlas.graph.selectNode('super:pair')")
    wait_js(browser, "return document.querySelector('#node-panel .node-id')?.textContent === 'super:pair'")
    browser.find_element(By.CSS_SELECTOR, "#node-panel button[data-pin-members]").click()
    pinned = wait_js(browser, f"""const p = document.getElementById('pinned-list').textContent;
        return p.includes({json.dumps(b)}) && [...window.atlas.graph.pinned];""", what="the members pinned")
    assert sorted(pinned) == sorted([a, b])


def test_corpus_views(browser, api_url, api, stored_graph, artifacts_dir) -> None:  # noqa: ANN001
    rec = stored_graph
    browser.get(f"{api_url}/ui/#/graphs?corpus_id={quote(rec.corpus_id)}")
    links = wait_js(browser, "return [...document.querySelectorAll('a.graph-link')].map(a => a.textContent)",
                    what="the graph list")
    assert links == [rec.graph_id]

    # A job id that does not exist: the API's 404 reason is shown, not an empty progress bar.
    browser.get(f"{api_url}/ui/#/job/no-such-job")
    err = wait_js(browser, "const e = document.querySelector('#job-box .error'); return e && e.textContent")
    assert "404" in err and "no-such-job" in err

    # Endpoints the API lacks are "not available" exactly when /openapi.json has no such route.
    paths = api.get("/openapi.json").json()["paths"]
    browser.get(f"{api_url}/ui/#/qk")
    state = wait_js(browser, """const b = document.getElementById('qk-box');
        return b && (b.querySelector('.not-available') ? 'na' : b.querySelector('form') ? 'form' : null);""")
    assert state == ("form" if any("qk" in p.lower().split("/") for p in paths) else "na")
    browser.get(f"{api_url}/ui/#/features")
    state = wait_js(browser, """const b = document.getElementById('feature-search');
        return b && (b.querySelector('.not-available') ? 'na' : b.querySelector('form') ? 'form' : null);""")
    assert state == ("form" if any(p in paths for p in ("/features", "/features/search")) else "na")

    # The feature page of a feature in the graph lists this graph among its instances.
    feat = max((n for n in rec.nodes if n.kind == "feature"), key=lambda n: n.activation)
    fkey = feat.fkey(rec.dictionary_set)
    browser.get(f"{api_url}/ui/#/feature/{quote(fkey, safe='')}?corpus_id={quote(rec.corpus_id)}")
    text = wait_js(browser, "const b = document.getElementById('feature-box'); return b && !b.textContent.startsWith('loading') && b.innerText")
    assert rec.graph_id in text, text
    browser.save_screenshot(str(artifacts_dir / "feature_page.png"))


def test_job_progress_page(browser, api_url, api, neo4j_driver, settings, artifacts_dir) -> None:  # noqa: ANN001
    """A job moved through the pipeline's own state functions: the page shows the API's counts and failures."""
    from workers.pipeline import jobs
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus

    db = settings.neo4j_database
    corpus = ValidatedCorpus("ui-model", "ui-dset", "ui job test", {}, [PromptSpec(f"prompt {i}") for i in range(4)],
                             [[1, 2, 3]] * 4, [])
    created = played_job(neo4j_driver, corpus, ("done", "done", "failed"), worker="ui-test-worker",
                         error="boom: out of memory", seconds=0.5, database=db)
    try:
        status = api.get(f"/jobs/{created.job_id}").json()
        assert (status["done"], status["failed"], status["queued"]) == (2, 1, 1)

        browser.get(f"{api_url}/ui/#/job/{quote(created.job_id)}")
        text = wait_js(browser, "const b = document.getElementById('job-box'); return b && b.querySelector('.job-state') && b.innerText")
        assert status["state"] in text
        assert "2 done, 1 failed, 0 cancelled, 0 running, 1 queued of 4" in text
        assert "boom: out of memory" in text
        width = browser.execute_script("return document.querySelector('#job-box .bar').style.width")
        assert float(width.rstrip("%")) == 75.0
        assert browser.find_elements(By.ID, "cancel-job"), "a running job offers Cancel"
        browser.save_screenshot(str(artifacts_dir / "job_progress.png"))
    finally:
        jobs.delete_job(neo4j_driver, created.job_id, db)


def test_global_circuit_page(browser, api_url, api, stored_graph, artifacts_dir) -> None:  # noqa: ANN001
    """The global circuit around a feature lists exactly the API's corpus-aggregated neighbours, in its order."""
    rec = stored_graph
    feat = max((n for n in rec.nodes if n.kind == "feature" and n.layer == 1), key=lambda n: n.influence or 0)
    fkey = feat.fkey(rec.dictionary_set)
    expected = {d: [n["fkey"] for n in api.get("/global/neighbours", params={
        "fkey": fkey, "corpus_id": rec.corpus_id, "direction": d, "limit": 15}).json()["items"]]
        for d in ("upstream", "downstream")}
    assert expected["upstream"] and expected["downstream"], "the test graph should give this feature both sides"
    browser.get(f"{api_url}/ui/#/global?fkey={quote(fkey, safe='')}&corpus_id={quote(rec.corpus_id)}")
    shown = wait_js(browser, """const b = document.getElementById('global-box');
        if (!b || !b.querySelector('svg.star')) return null;
        const col = (k) => [...b.querySelectorAll('.cols > div')[k].querySelectorAll('td:first-child a')].map(a => a.textContent);
        return {upstream: col(0), downstream: col(1), circles: b.querySelectorAll('svg.star circle').length};""")
    assert shown["upstream"] == expected["upstream"] and shown["downstream"] == expected["downstream"]
    assert shown["circles"] == 1 + len(expected["upstream"]) + len(expected["downstream"])
    browser.save_screenshot(str(artifacts_dir / "global_circuit.png"))


@pytest.fixture(scope="module")
def clt_graph(neo4j_driver, settings):  # noqa: ANN001, ANN201 - GraphRecord
    """A graph of attention SAEs plus a cross-layer transcoder reading hook_resid_mid, stored by the writer."""
    import torch

    from tests.ui.graphs import build_record
    from workers.store.writer import delete_graph, write_graph

    torch.set_num_threads(1)
    rec = build_record(clt="resid_mid")
    write_graph(neo4j_driver, rec, database=settings.neo4j_database)
    yield rec
    delete_graph(neo4j_driver, rec.graph_id, database=settings.neo4j_database)


def test_clt_features_are_drawn_at_their_source_layer(browser, api_url, api, clt_graph, artifacts_dir) -> None:  # noqa: ANN001
    """Issue 19: a CLT feature is one node, drawn in the row of the MLP site of its source layer (the layer
    whose residual it reads), whatever later layers it writes to; everything the API serves is drawn."""
    rec = clt_graph
    top = len(rec.nodes)
    shown = open_graph(browser, api_url, rec.graph_id, top)
    expected = api_circuit(api, rec.graph_id, max_nodes=top)
    assert (shown["nodes"], shown["edges"]) == (len(expected["nodes"]), len(expected["edges"]))
    assert shown["nodes"] == top
    drawn = dict(browser.execute_script("""
        const L = window.atlas.graph.scene.layout;
        return [...L.index.entries()].map(([id, i]) => {
            const row = L.rows.find(r => L.y[i] >= r.top && L.y[i] < r.top + r.height);
            return [id, row ? row.label : null];
        });"""))
    clt_feats = [n for n in rec.nodes if n.kind == "feature" and n.dictionary.endswith(".mlp")]
    assert {n.layer for n in clt_feats} == {0, 1, 2} and len(clt_feats) > 20
    for n in clt_feats:
        assert drawn[n.node_id] == f"L{n.layer}.mlp", (n.node_id, drawn[n.node_id])
    # each feature once (one node id per CLT feature), and edges from a source layer's features to features
    # two layers up are among those drawn (the CLT writes there directly)
    assert len({n.node_id for n in clt_feats}) == len(clt_feats)
    layer_of = {n.node_id: n.layer for n in clt_feats}
    assert any(layer_of.get(e["source"]) == 0 and layer_of.get(e["target"]) == 2 for e in expected["edges"])
    browser.save_screenshot(str(artifacts_dir / "graph_clt.png"))
