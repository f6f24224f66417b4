"""Rendering speed of the circuit viewer in headless Chromium on synthetic circuits of N nodes.

Serves the real app (static /ui only; no Neo4j needed) with uvicorn, opens /ui in Debian's headless Chromium,
and hands the graph view a synthetic CircuitOut (random nodes over 64 positions x 8 layers x 2 sites, random
signed edges from lower to higher rows). Measures, inside the page:

- first render: layout + scene + canvas draw (JS), and until two animation frames later (painted);
- full redraw: one full-quality draw until painted (a settled zoom/pan, a new pruning);
- interactive frame: interval between painted frames while zooming/panning through the wheel/drag path;
- hover: hit test + overlay redraw per pointer position;
- regroup: rebuilding the scene with a 50-node supernode, until painted (what "Group" costs).

Run: ``~/.cache/circuit-atlas/venv/bin/python bench/ui_render.py --nodes 5000 --edges 20000 50000``
Prints one JSON object per size. CPU is shared on this machine: read the load average printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1600,1000")


def synthetic_circuit(n_nodes: int, n_edges: int, seed: int = 0, n_pos: int = 64, n_layers: int = 8) -> dict:
    """A CircuitOut-shaped dict: embeddings at every position, logits at the last, features elsewhere."""
    rng = random.Random(seed)
    nodes = [{"node_id": f"emb:p{p}", "kind": "embedding", "layer": 0, "pos": p, "token": f"tok{p}",
              "activation": 1.0, "influence": rng.random()} for p in range(n_pos)]
    nodes += [{"node_id": f"logit:p{n_pos - 1}:t{t}", "kind": "logit", "layer": n_layers, "pos": n_pos - 1,
               "activation": 1.0, "influence": None} for t in range(10)]
    while len(nodes) < n_nodes:
        layer, site, pos, f = rng.randrange(n_layers), rng.choice(["attn", "mlp"]), rng.randrange(n_pos), rng.randrange(4096)
        nodes.append({"node_id": f"feat:L{layer}.{site}:p{pos}:f{f}.{len(nodes)}", "kind": "feature", "layer": layer,
                      "pos": pos, "feature": f, "dictionary": f"L{layer}.{site}", "fkey": f"syn/L{layer}.{site}#{f}",
                      "activation": rng.expovariate(1.0), "influence": rng.expovariate(50.0)})

    def rank(n: dict) -> float:
        if n["kind"] == "embedding":
            return -1
        if n["kind"] == "logit":
            return 99
        return n["layer"] * 2 + (n["dictionary"].endswith("mlp"))

    order = sorted(range(len(nodes)), key=lambda i: rank(nodes[i]))
    edges, seen = [], set()
    while len(edges) < n_edges:
        a, b = sorted(rng.sample(range(len(order)), 2))
        s, t = nodes[order[a]], nodes[order[b]]
        if rank(s) == rank(t) or (s["pos"] > t["pos"]) or (s["node_id"], t["node_id"]) in seen:
            continue
        seen.add((s["node_id"], t["node_id"]))
        edges.append({"source": s["node_id"], "target": t["node_id"], "weight": rng.gauss(0, 1)})
    return {"graph": {"graph_id": f"synthetic-{n_nodes}", "provenance": {"token_strings": [f"tok{p}" for p in range(n_pos)]}},
            "nodes": nodes, "edges": edges, "pruning": {"max_nodes": n_nodes}, "stats": {"graph_n_nodes": n_nodes}}


MEASURE = """
const [circuit, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const { GraphView } = await import('/ui/graph/view.js');
  const main = document.getElementById('main');
  const pct = (xs, q) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(q * s.length))]; };
  const painted = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  await painted();
  const t0 = performance.now();
  const view = new GraphView(main, circuit.graph.graph_id, { max_nodes: circuit.nodes.length });
  view.showCircuit(circuit);
  const tSync = performance.now() - t0;
  await painted();
  const firstPaint = performance.now() - t0;
  const st = view.el.querySelector('#graph-status').dataset;
  const rendered = [+st.renderedNodes, +st.renderedEdges];
  const c = view.canvas;
  // Full-quality redraws (what happens when a zoom/pan settles, or on a new pruning), until painted.
  const full = [];
  const js = [];
  for (let k = 0; k < 5; k++) {
    c.panX += 3;
    const t = performance.now(); c.draw(); js.push(performance.now() - t);
    await painted(); full.push(performance.now() - t);
  }
  // Interactive frames: zoom and pan through the same path as wheel/drag events, painted frame by frame.
  const intervals = [];
  let last = performance.now();
  for (let k = 0; k < 30; k++) {
    if (k < 15) c.zoomAt(c.cssW / 2, c.cssH / 2, k < 8 ? 1.1 : 1 / 1.1); else c.panBy(6, -2);
    await new Promise((r) => requestAnimationFrame(r));
    const now = performance.now(); intervals.push(now - last); last = now;
  }
  c.fit(); c.draw(); await painted();
  const hovers = [];
  for (let k = 0; k < 300; k++) {
    const i = (k * 7919) % view.scene.nodes.length;
    const p = c.screenPosition(i);
    const t = performance.now();
    const hit = c.nodeAt(p.x + 0.5, p.y + 0.5);
    if (hit !== c.hovered) { c.hovered = hit; c.drawOverlay(); }
    hovers.push(performance.now() - t);
  }
  const members = view.scene.nodes.filter((n) => n.kind === 'feature').slice(0, 50).map((n) => n.node_id);
  members.forEach((id) => view.chosen.add(id));
  const tg = performance.now();
  view.groupChosen('bench');
  await painted();
  const regroup = performance.now() - tg;
  done({ nodes: circuit.nodes.length, edges: circuit.edges.length,
         rendered_nodes: rendered[0], rendered_edges: rendered[1],
         first_render_js_ms: +tSync.toFixed(1), first_render_to_paint_ms: +firstPaint.toFixed(1),
         full_redraw_js_ms_median: +pct(js, 0.5).toFixed(1), full_redraw_to_paint_ms_median: +pct(full, 0.5).toFixed(1),
         interactive_frame_ms_median: +pct(intervals, 0.5).toFixed(1), interactive_frame_ms_p95: +pct(intervals, 0.95).toFixed(1),
         hover_ms_median: +pct(hovers, 0.5).toFixed(3), hover_ms_p95: +pct(hovers, 0.95).toFixed(3),
         regroup_50_to_paint_ms: +regroup.toFixed(1) });
})().catch((e) => done({ error: String(e && e.stack || e) }));
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--edges", type=int, nargs="+", default=[20_000, 50_000])
    args = ap.parse_args()

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run_migrations=False), host="127.0.0.1", port=port,
                                           log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    profile = tempfile.mkdtemp(prefix="atlas-ui-bench-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    driver.set_script_timeout(300)
    try:
        for n_edges in args.edges:
            circuit = synthetic_circuit(args.nodes, n_edges)
            driver.get(f"http://127.0.0.1:{port}/ui/#/qk")  # a light page; the bench draws its own view
            result = driver.execute_async_script(MEASURE, circuit)
            result["load_average_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps(result), flush=True)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        server.should_exit = True


if __name__ == "__main__":
    main()
