"""Feature labels in real headless Chromium against the real API and Neo4j: the feature page's form stores a
label (the API then answers it, with the key's id), the graph view shows it on hover and in the node panel,
feature search lists it; clearing it on the page removes it."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By

from tests.ui.test_viewer import api_circuit, hover_node, open_graph, wait_js

pytestmark = pytest.mark.usefixtures("services")


def test_label_from_the_feature_page_shows_in_graph_and_search(browser, api_url, api, stored_graph, write_key,  # noqa: ANN001
                                                               artifacts_dir) -> None:
    gid = stored_graph.graph_id
    circuit = api_circuit(api, gid, max_nodes=30)
    node = max((n for n in circuit["nodes"] if n["kind"] == "feature"), key=lambda n: n["influence"] or 0)
    fkey, text = node["fkey"], f"mover {uuid.uuid4().hex[:6]}"

    browser.get("about:blank")
    browser.get(f"{api_url}/ui/#/feature/{quote(fkey, safe='')}")
    form = wait_js(browser, "return document.getElementById('label-form')", what="the label form")
    assert browser.find_element(By.CSS_SELECTOR, "#feature-label .label-line").text == "no label"
    form.find_element(By.NAME, "label").send_keys(text)
    form.find_element(By.NAME, "note").send_keys("moves the name")
    key_box = form.find_element(By.NAME, "api_key")
    key_box.clear()  # the tab may remember another test's key (sessionStorage)
    key_box.send_keys(write_key[1])
    form.find_element(By.TAG_NAME, "button").click()
    shown = wait_js(browser, "return document.querySelector('#feature-label .label-text')?.textContent",
                    what="the saved label")
    assert shown == text
    stored = api.get(f"/features/{quote(fkey, safe='/')}").json()["feature"]
    assert (stored["label"], stored["note"], stored["label_by"]) == (text, "moves the name", write_key[0].key_id)
    assert write_key[0].key_id in browser.find_element(By.CSS_SELECTOR, "#feature-label .label-by").text
    browser.save_screenshot(str(artifacts_dir / "feature_label.png"))

    # The graph view: the tooltip on hover and the node panel carry the label.
    open_graph(browser, api_url, gid, 30)
    hover_node(browser, node["node_id"])
    tip = wait_js(browser, "const t = document.getElementById('tooltip'); return !t.hidden && t.innerText",
                  what="the tooltip")
    assert node["node_id"] in tip and f"label: {text}" in tip
    browser.save_screenshot(str(artifacts_dir / "graph_label_hover.png"))

    # Search by label: the one labelled feature, with its label in the table.
    browser.get(f"{api_url}/ui/#/features?q={quote('label:' + text)}")
    rows = wait_js(browser, """const rows = [...document.querySelectorAll('#feature-table tr.feature-hit')];
        return rows.length && rows.map(r => [r.querySelector('a.feature-result').textContent,
                                             r.querySelector('td.feature-label').textContent]);""", what="label hits")
    assert rows == [[fkey, text]]

    # Clearing on the feature page removes it from the API.
    browser.get(f"{api_url}/ui/#/feature/{quote(fkey, safe='')}")
    wait_js(browser, "return document.getElementById('label-clear')", what="the clear button").click()
    wait_js(browser, "return document.querySelector('#feature-label .label-line')?.textContent === 'no label'",
            what="the cleared label")
    assert api.get(f"/features/{quote(fkey, safe='/')}").json()["feature"]["label"] is None
