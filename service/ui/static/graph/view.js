// The graph page: a stored graph's circuit from GET /graphs/{id}/circuit, re-queried whenever the pruning
// controls change; hover tooltip, node panel (top inputs/outputs, feature page link), pins, supernodes,
// exports. State that a reader would want to share (pruning) lives in the URL hash.

import { ApiError, KEY_STORE, getJSON, pollAnalysis, sendJSON, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { canvasesToPNG, download, neuronpediaJSON, sceneToSVG } from "./export.js";
import { GraphCanvas } from "./render.js";
import { buildScene, neighbours } from "./scene.js";

export const DEFAULT_PRUNING = { max_nodes: 200, edge_threshold: 0, max_edges: 5000, node_threshold: 0 };

function h(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  return t.content.firstElementChild;
}

export class GraphView {
  constructor(root, graphId, pruning) {
    this.root = root;
    this.graphId = graphId;
    this.pruning = { ...DEFAULT_PRUNING, ...pruning };
    this.circuit = null;
    this.scene = null;
    this.pinned = new Set();
    this.supernodes = [];
    this.chosen = new Set();
    this.selectedId = null;
    this.seq = 0;
    this._build();
  }

  _build() {
    const p = this.pruning;
    this.el = h(`
      <section class="graph-page">
        <div class="toolbar">
          <strong class="graph-title">${esc(this.graphId)}</strong>
          <label>nodes <input id="prune-nodes" type="range" min="0" max="${Math.max(p.max_nodes, 1)}" step="1" value="${p.max_nodes}">
            <output id="prune-nodes-value">${p.max_nodes}</output></label>
          <label>|w| ≥ <input id="edge-threshold" type="number" min="0" step="any" value="${p.edge_threshold}" size="6"></label>
          <label>max edges <input id="max-edges" type="number" min="0" step="1" value="${p.max_edges}" size="7"></label>
          <button id="fit">Fit</button>
          <span class="sep"></span>
          <input id="group-name" placeholder="supernode name" size="12">
          <button id="group" title="Shift-click nodes to choose them, then group">Group chosen (<span id="chosen-count">0</span>)</button>
          <span class="sep"></span>
          Export <button id="export-png">PNG</button><button id="export-svg">SVG</button><button id="export-np">Neuronpedia JSON</button>
          <span id="graph-status" class="status" data-rendered-nodes="0" data-rendered-edges="0">loading…</span>
        </div>
        <div class="graph-body">
          <div id="graph-canvas" class="graph-canvas"></div>
          <aside id="node-panel" class="panel" hidden></aside>
        </div>
        <div class="graph-foot">
          <div><b>Pinned</b> <span id="pinned-list" class="chips"></span></div>
          <form id="intervene-form" class="inline"><b>Intervene on the pinned features</b>
            <select name="mode"><option value="ablate">ablate</option><option value="scale">scale by</option><option value="set">set to</option></select>
            <input name="value" type="number" step="any" size="6" placeholder="value">
            <input name="api_key" type="password" size="18" placeholder="API key (write)">
            <button>Run</button></form>
          <div id="intervention-result"></div>
          <div><b>Supernodes</b> <span id="supernode-list" class="chips"></span></div>
          <div class="hint">Wheel: zoom · drag: pan · double-click: fit · click: node panel · shift-click: choose for a supernode</div>
        </div>
        <div id="tooltip" class="tooltip" hidden></div>
      </section>`);
    this.root.replaceChildren(this.el);
    const $ = (sel) => this.el.querySelector(sel);
    this.$ = $;
    this.canvas = new GraphCanvas($("#graph-canvas"), {
      onHover: (i, x, y) => this._hover(i, x, y),
      onClick: (i, ev) => this._click(i, ev),
    });
    const slider = $("#prune-nodes");
    let timer = null;
    slider.addEventListener("input", () => {
      $("#prune-nodes-value").textContent = slider.value;
      clearTimeout(timer);
      timer = setTimeout(() => this.setPruning({ max_nodes: Number(slider.value) }), 250);
    });
    slider.addEventListener("change", () => {
      clearTimeout(timer);
      this.setPruning({ max_nodes: Number(slider.value) });
    });
    $("#edge-threshold").addEventListener("change", (e) => this.setPruning({ edge_threshold: Math.max(0, Number(e.target.value) || 0) }));
    $("#max-edges").addEventListener("change", (e) => this.setPruning({ max_edges: Math.max(0, Math.floor(Number(e.target.value) || 0)) }));
    $("#fit").addEventListener("click", () => { this.canvas.fit(); this.canvas.draw(); });
    $("#group").addEventListener("click", () => this.groupChosen($("#group-name").value));
    const iform = $("#intervene-form");
    iform.elements.api_key.value = sessionStorage.getItem(KEY_STORE) || "";
    iform.addEventListener("submit", (e) => {
      e.preventDefault();
      const f = new FormData(iform);
      this.intervene(f.get("mode"), f.get("value"), f.get("api_key").trim());
    });
    $("#export-png").addEventListener("click", () => download(`${this.graphId}.png`, this.exportPNG(), "image/png"));
    $("#export-svg").addEventListener("click", () => download(`${this.graphId}.svg`, this.exportSVG(), "image/svg+xml"));
    $("#export-np").addEventListener("click", async () => {
      try {
        download(`${this.graphId}.neuronpedia.json`, JSON.stringify(await this.exportNeuronpedia(), null, 1), "application/json");
      } catch (err) {
        this._status(`export failed: ${err.message}`, true);
      }
    });
  }

  /** Change pruning, update the URL, re-query the API. */
  setPruning(change) {
    Object.assign(this.pruning, change);
    const q = withQuery("", this.pruning);
    history.replaceState(null, "", `#/graph/${encodeURIComponent(this.graphId)}${q}`);
    return this.load();
  }

  async load() {
    const seq = ++this.seq;
    this._status("loading…");
    this.el.dataset.loading = "1";
    const url = withQuery(`/graphs/${encodeURIComponent(this.graphId)}/circuit`, this.pruning);
    let circuit;
    try {
      circuit = await getJSON(url);
    } catch (err) {
      if (seq !== this.seq) return;
      delete this.el.dataset.loading;
      this._status(err.message, true);
      return;
    }
    if (seq !== this.seq) return; // a newer request superseded this one
    this.showCircuit(circuit);
    delete this.el.dataset.loading;
  }

  /** Render a circuit object (CircuitOut). */
  showCircuit(circuit) {
    const t0 = performance.now();
    const keepView = this.circuit !== null;
    this.circuit = circuit;
    const total = circuit.stats?.graph_n_nodes ?? circuit.graph?.n_nodes;
    const slider = this.$("#prune-nodes");
    if (total != null && Number(slider.max) !== total) {
      slider.max = String(total);
    }
    this._rebuild(keepView);
    this.firstRenderMs = performance.now() - t0;
  }

  _rebuild(keepView = true) {
    this.scene = buildScene(this.circuit, this.supernodes);
    const counts = this.canvas.setScene(this.scene, { keepView });
    this._syncHighlight();
    const st = this.$("#graph-status");
    st.dataset.renderedNodes = String(counts.nodes);
    st.dataset.renderedEdges = String(counts.edges);
    st.dataset.apiNodes = String(this.circuit.nodes.length);
    st.dataset.apiEdges = String(this.circuit.edges.length);
    const g = this.circuit.stats || {};
    this._status(`${counts.nodes} nodes · ${counts.edges} edges shown` +
      (g.graph_n_nodes != null ? ` (graph: ${g.graph_n_nodes} nodes, ${g.graph_n_edges} edges)` : ""));
    this._renderLists();
    if (this.selectedId && this.scene.layout.index.has(this.selectedId)) this._openPanel(this.scene.layout.index.get(this.selectedId));
    else this._closePanel();
  }

  _status(text, error = false) {
    const st = this.$("#graph-status");
    st.textContent = text;
    st.classList.toggle("error", error);
  }

  _syncHighlight() {
    const idx = this.scene.layout.index;
    const ids = (set) => new Set([...set].filter((id) => idx.has(id)).map((id) => idx.get(id)));
    this.canvas.highlight = {
      selected: this.selectedId && idx.has(this.selectedId) ? idx.get(this.selectedId) : -1,
      pinned: ids(this.pinned),
      chosen: ids(this.chosen),
    };
    this.canvas.drawOverlay();
  }

  _hover(i, x, y) {
    const tip = this.$("#tooltip");
    if (i < 0) {
      tip.hidden = true;
      return;
    }
    const n = this.scene.nodes[i];
    let edge = "";
    const sel = this.canvas.highlight.selected;
    if (sel >= 0 && sel !== i) {
      for (let k = 0; k < this.scene.w.length; k++) {
        if (this.scene.src[k] === i && this.scene.dst[k] === sel) edge = `<div>edge → selected: <b>${num(this.scene.w[k])}</b></div>`;
        if (this.scene.src[k] === sel && this.scene.dst[k] === i) edge = `<div>edge from selected: <b>${num(this.scene.w[k])}</b></div>`;
      }
    }
    const label = n.kind !== "supernode" && n.label ? `<div class="tip-label">label: <b>${esc(n.label)}</b></div>` : "";
    tip.innerHTML = `<div><b>${esc(n.node_id)}</b></div>${label}<div>${esc(n.kind)}${n.token != null ? ` “${esc(n.token)}”` : ""}</div>
      <div>activation: <b>${num(n.activation)}</b></div><div>influence (attribution): <b>${num(n.influence)}</b></div>${edge}`;
    const box = this.$("#graph-canvas").getBoundingClientRect();
    const pageBox = this.el.getBoundingClientRect();
    tip.style.left = `${box.left - pageBox.left + x + 14}px`;
    tip.style.top = `${box.top - pageBox.top + y + 14}px`;
    tip.hidden = false;
  }

  _click(i, ev) {
    if (i < 0) {
      this.selectedId = null;
      this._closePanel();
      this._syncHighlight();
      return;
    }
    const n = this.scene.nodes[i];
    if (ev && ev.shiftKey) {
      if (n.kind !== "supernode") this.toggleChosen(n.node_id);
      return;
    }
    this.selectedId = n.node_id;
    this._syncHighlight();
    this._openPanel(i);
  }

  selectNode(nodeId) {
    const i = this.scene.layout.index.get(nodeId);
    if (i === undefined) return false;
    this._click(i, null);
    return true;
  }

  _openPanel(i) {
    const panel = this.$("#node-panel");
    const n = this.scene.nodes[i];
    const nb = neighbours(this.scene, i);
    const corpus = this.circuit.graph?.corpus_id;
    // An input from an earlier position reached this node through attention: offer the QK pairs of a head at
    // (this position, its position); an attention-SAE feature names its layer, otherwise the reader picks it.
    const attnLayer = /^feat:L(\d+)\.attn:/.exec(n.node_id)?.[1] ?? "";
    const qkHref = (src) => `#/qk?graph_id=${encodeURIComponent(this.graphId)}&query_position=${n.pos}&key_position=${src.pos}&layer=${attnLayer}`;
    const row = (e) => `<li><a href="#" data-select="${esc(e.node.node_id)}">${esc(e.node.node_id)}</a>
      ${n.pos != null && e.node.pos != null && e.node.pos < n.pos ? `<a class="qk-link" href="${qkHref(e.node)}" title="why the head attends here: QK pairs">QK</a>` : ""}
      <span class="w ${e.w < 0 ? "neg" : "pos"}">${num(e.w)}</span></li>`;
    const links = n.fkey
      ? `<p><a class="feature-link" href="#/feature/${encodeURIComponent(n.fkey)}${corpus ? `?corpus_id=${encodeURIComponent(corpus)}` : ""}">feature page</a>
         · <a href="#/global?fkey=${encodeURIComponent(n.fkey)}${corpus ? `&corpus_id=${encodeURIComponent(corpus)}` : ""}">global circuit</a></p>`
      : "";
    const members = n.kind === "supernode"
      ? `<p>members: ${n.members.map(esc).join(", ")}</p><button data-ungroup="${esc(n.label)}">Ungroup</button>
         <button data-pin-members="${esc(n.label)}" title="pin every member, e.g. to intervene on the supernode">Pin its members</button>` : "";
    panel.innerHTML = `
      <header><b class="node-id">${esc(n.node_id)}</b><button class="close" title="close">×</button></header>
      <table>
        <tr><th>kind</th><td>${esc(n.kind)}</td></tr>
        <tr><th>layer</th><td>${esc(n.layer ?? "–")}</td></tr><tr><th>position</th><td>${esc(n.pos ?? "–")}</td></tr>
        ${n.token != null ? `<tr><th>token</th><td>${esc(n.token)}</td></tr>` : ""}
        ${n.fkey ? `<tr><th>feature</th><td>${esc(n.fkey)}</td></tr>` : ""}
        ${n.fkey && n.label ? `<tr><th>label</th><td class="node-label">${esc(n.label)}</td></tr>` : ""}
        <tr><th>activation</th><td>${num(n.activation)}</td></tr><tr><th>influence</th><td>${num(n.influence)}</td></tr>
      </table>
      ${links}${members}
      <p><a class="qk-circuit" href="#/qk?graph_id=${encodeURIComponent(this.graphId)}&from_circuit=1">QK pairs of the circuit's heads</a></p>
      ${n.kind !== "supernode" ? `<button class="pin">${this.pinned.has(n.node_id) ? "Unpin" : "Pin"}</button>
        <button class="choose">${this.chosen.has(n.node_id) ? "Unchoose" : "Choose for supernode"}</button>` : ""}
      <h4>Top inputs <small>(${nb.nIn})</small></h4><ol class="inputs">${nb.inputs.map(row).join("")}</ol>
      <h4>Top outputs <small>(${nb.nOut})</small></h4><ol class="outputs">${nb.outputs.map(row).join("")}</ol>`;
    panel.hidden = false;
    panel.querySelector(".close").addEventListener("click", () => this._click(-1));
    panel.querySelector(".pin")?.addEventListener("click", () => this.togglePin(n.node_id));
    panel.querySelector(".choose")?.addEventListener("click", () => this.toggleChosen(n.node_id));
    panel.querySelector("[data-ungroup]")?.addEventListener("click", (e) => this.ungroup(e.target.dataset.ungroup));
    panel.querySelector("[data-pin-members]")?.addEventListener("click", (e) => this.pinMembers(e.target.dataset.pinMembers));
    panel.querySelectorAll("[data-select]").forEach((a) => a.addEventListener("click", (e) => {
      e.preventDefault();
      this.selectNode(a.dataset.select);
    }));
  }

  _closePanel() {
    this.$("#node-panel").hidden = true;
  }

  /** Add or remove a node from the set the next "Group" turns into a supernode (shift-click does the same). */
  toggleChosen(nodeId) {
    if (this.chosen.has(nodeId)) this.chosen.delete(nodeId);
    else this.chosen.add(nodeId);
    this.$("#chosen-count").textContent = String(this.chosen.size);
    this._syncHighlight();
    const i = this.scene.layout.index.get(nodeId);
    if (i !== undefined && this.selectedId === nodeId) this._openPanel(i);
  }

  togglePin(nodeId) {
    if (this.pinned.has(nodeId)) this.pinned.delete(nodeId);
    else this.pinned.add(nodeId);
    this._syncHighlight();
    this._renderLists();
    const i = this.scene.layout.index.get(nodeId);
    if (i !== undefined && this.selectedId === nodeId) this._openPanel(i);
  }

  groupChosen(name) {
    const members = [...this.chosen];
    name = (name || "").trim() || `group ${this.supernodes.length + 1}`;
    if (members.length < 2) {
      this._status("choose at least two nodes (shift-click) to make a supernode", true);
      return false;
    }
    if (this.supernodes.some((s) => s.name === name)) {
      this._status(`a supernode named “${name}” exists; pick another name`, true);
      return false;
    }
    // A node belongs to one supernode at most: taking it into a new group removes it from the old one.
    for (const s of this.supernodes) s.members = s.members.filter((id) => !this.chosen.has(id));
    this.supernodes = this.supernodes.filter((s) => s.members.length > 0);
    this.supernodes.push({ name, members });
    this.chosen.clear();
    this.$("#chosen-count").textContent = "0";
    this.$("#group-name").value = "";
    this._rebuild();
    return true;
  }

  /** Pin every member of a supernode, so that "Intervene" acts on the supernode's features together. */
  pinMembers(name) {
    const sn = this.supernodes.find((s) => s.name === name);
    if (!sn) return;
    for (const id of sn.members) this.pinned.add(id);
    this._syncHighlight();
    this._renderLists();
  }

  ungroup(name) {
    this.supernodes = this.supernodes.filter((s) => s.name !== name);
    if (this.selectedId === `super:${name}`) this.selectedId = null;
    this._rebuild();
  }

  _renderLists() {
    const chip = (id, attr) => `<a href="#" class="chip" ${attr}="${esc(id)}">${esc(id)}</a>`;
    const pl = this.$("#pinned-list");
    pl.innerHTML = [...this.pinned].map((id) => chip(id, "data-select")).join(" ") || "<i>none</i>";
    const sl = this.$("#supernode-list");
    sl.innerHTML = this.supernodes.map((s) => chip(`super:${s.name}`, "data-select")).join(" ") || "<i>none</i>";
    this.el.querySelectorAll(".graph-foot [data-select]").forEach((a) => a.addEventListener("click", (e) => {
      e.preventDefault();
      if (!this.selectNode(a.dataset.select)) this._status(`${a.dataset.select} is not in the current pruning`, true);
    }));
  }

  /** POST the pinned feature nodes to the interventions analysis, poll it, draw its result under the graph. */
  async intervene(mode, value, key) {
    const out = this.$("#intervention-result");
    const nodeIds = [...this.pinned].filter((id) => id.startsWith("feat:"));
    if (!nodeIds.length) {
      out.innerHTML = '<div class="error">pin at least one feature node first (node panel → Pin)</div>';
      return null;
    }
    sessionStorage.setItem(KEY_STORE, key);
    out.innerHTML = '<p class="intervention-status">queueing…</p>';
    try {
      const body = { node_ids: nodeIds, mode, ...(mode === "ablate" || value === "" ? {} : { value: Number(value) }) };
      const job = await sendJSON(`/graphs/${encodeURIComponent(this.graphId)}/interventions`, "POST", body, key);
      const a = await pollAnalysis(job, (st) => { out.innerHTML = `<p class="intervention-status">analysis ${esc(st.analysis_id)}: ${esc(st.status)}…</p>`; });
      if (a.status !== "done") throw new Error(`analysis ${a.analysis_id} ${a.status}: ${a.error}`);
      out.innerHTML = interventionTables(a.result);
      out.dataset.analysisId = a.analysis_id;
      return a.result;
    } catch (err) {
      out.innerHTML = `<div class="error">${esc(err instanceof ApiError ? err.message : String(err))}</div>`;
      return null;
    }
  }

  exportSVG() {
    return sceneToSVG(this.scene, this.graphId);
  }

  exportPNG() {
    return canvasesToPNG(this.canvas.base, this.canvas.overlay);
  }

  exportNeuronpedia() {
    return neuronpediaJSON(this.graphId, this.pruning, { pinned: this.pinned, supernodes: this.supernodes,
      clicked: this.selectedId || "" });
  }

  /** Screen position (relative to the page) of a node, for tests and demos. */
  nodeClientPosition(nodeId) {
    const i = this.scene.layout.index.get(nodeId);
    if (i === undefined) return null;
    const p = this.canvas.screenPosition(i);
    const b = this.canvas.overlay.getBoundingClientRect();
    return { x: b.left + p.x, y: b.top + p.y };
  }
}

/** Per target: frozen change, the edges' prediction (equal to it), live change; then the live top-logit changes. */
function interventionTables(r) {
  const edits = r.edits.map((e) => `${esc(e.node_id)}: ${num(e.clean_activation)} → ${num(e.new_activation)}`).join("; ");
  const w = (v) => (v == null ? "–" : `<span class="w ${v < 0 ? "neg" : "pos"}">${num(v)}</span>`);
  return `<p class="intervention-edits"><b>${esc(r.mode)}</b> ${edits}</p>
    <div class="cols"><table class="data intervention-targets"><thead><tr><th>target</th><th>clean</th><th>frozen Δ</th>
      <th>from edges</th><th>live Δ</th></tr></thead><tbody>${r.targets.map((t) => `<tr class="intervention-target" data-id="${esc(t.node_id)}"
      data-frozen="${t.frozen_change}" data-edges="${t.from_edges}" data-live="${t.live_change ?? ""}"><td>${esc(t.label)}</td><td class="num">${num(t.clean)}</td>
      <td class="num">${w(t.frozen_change)}</td><td class="num">${w(t.from_edges)}</td><td class="num">${w(t.live_change)}</td></tr>`).join("")}</tbody></table>
    <table class="data intervention-logits"><thead><tr><th>token (live, position ${r.position})</th><th>before</th><th>after</th><th>Δ</th></tr></thead>
      <tbody>${r.top_logit_changes.map((c) => `<tr class="logit-change" data-change="${c.change}"><td>${esc(c.token ?? `#${c.token_id}`)}</td>
      <td class="num">${num(c.before)}</td><td class="num">${num(c.after)}</td><td class="num">${w(c.change)}</td></tr>`).join("")}</tbody></table></div>`;
}
