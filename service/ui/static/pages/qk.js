// QK pairs of a head: asks a worker for the exact decomposition of the score (POST /graphs/{id}/qk) and
// polls the analysis.

import { apiPaths, KEY_STORE, pollAnalysis, sendJSON } from "../api.js";
import { esc, num } from "../format.js";
import { errorBox, notAvailable, section } from "./common.js";

const QK_FIELDS = ["layer", "head", "query_position", "key_position"];

function qkHeadTable(h) {
  // Every term of the identity is a row: the listed pairs, the other pairs, the three bias terms; they sum to the score.
  const b = h.bias_terms;
  const terms = [...h.pairs.map((p) => ({ q: p.query_node, k: p.key_node, v: p.contribution, cls: "qk-pair", qIn: p.query_in_graph, kIn: p.key_in_graph })),
    { q: `${h.n_pairs - h.pairs.length} other pairs`, k: "", v: h.other_pairs, cls: "qk-rest" },
    ...Object.entries(b).map(([name, v]) => ({ q: name, k: "", v, cls: "qk-bias" }))];
  const node = (id, inGraph) => (inGraph ? `<b title="in the stored circuit">${esc(id)}</b>` : esc(id));
  const sum = terms.reduce((a, t) => a + t.v, 0);
  return `<div class="qk-head" data-layer="${h.layer}" data-head="${h.head}" data-score="${h.score}">
    <h3>layer ${h.layer}, head ${h.head}: query position ${h.query_position} → key position ${h.key_position}</h3>
    <p>score <b class="qk-score">${num(h.score)}</b> (pre-softmax, scaling ${num(h.scaling)}) · attention ${num(h.attention)}
      ${h.credit != null ? ` · circuit credit ${num(h.credit)}` : ""}</p>
    <table class="data qk-table"><thead><tr><th>query side</th><th>key side</th><th>contribution</th></tr></thead><tbody>
    ${terms.map((t) => `<tr class="${t.cls}" data-v="${t.v}"><td>${node(t.q, t.qIn)}</td><td>${node(t.k, t.kIn)}</td>
      <td class="num"><span class="w ${t.v < 0 ? "neg" : "pos"}">${num(t.v)}</span></td></tr>`).join("")}
    <tr class="qk-sum"><td colspan="2"><b>sum</b> (= score)</td><td class="num"><b>${num(sum)}</b></td></tr></tbody></table>
    <div class="cols"><div><h4>Query-side nodes</h4><ol>${h.query_nodes.map((n) => `<li>${node(n.node_id, n.in_graph)} <span class="w ${n.contribution < 0 ? "neg" : "pos"}">${num(n.contribution)}</span></li>`).join("")}</ol></div>
    <div><h4>Key-side nodes</h4><ol>${h.key_nodes.map((n) => `<li>${node(n.node_id, n.in_graph)} <span class="w ${n.contribution < 0 ? "neg" : "pos"}">${num(n.contribution)}</span></li>`).join("")}</ol></div></div></div>`;
}

export async function qkPage(root, params) {
  const el = section(root, "<h2>QK pairs of a head</h2><div id=\"qk-box\">checking the API…</div>");
  const box = el.querySelector("#qk-box");
  const paths = await apiPaths();
  if (!paths["/graphs/{graph_id}/qk"]?.post) {
    box.innerHTML = notAvailable("QK attribution", "POST /graphs/{graph_id}/qk");
    return;
  }
  const v = (k) => esc(params.get(k) || "");
  const fromCircuit = params.get("from_circuit") === "1";
  box.innerHTML = `<p>Splits a head's pre-softmax attention score exactly into (query node, key node) pairs plus bias terms. A worker
    recomputes the graph's prompt; this needs an API key with the <code>write</code> scope (kept in this tab only).</p>
    <form id="qk-form" class="qk-form">
      <label>graph <input name="graph_id" value="${v("graph_id")}" size="34" required></label>
      <label><input type="checkbox" name="from_circuit" ${fromCircuit ? "checked" : ""}> heads carrying the circuit's strongest edges</label>
      <fieldset class="qk-one"><legend>one head</legend>${QK_FIELDS.map((f) => `<label>${f.replace("_", " ")} <input name="${f}" type="number" min="0" value="${v(f)}"></label>`).join(" ")}</fieldset>
      <label>top pairs <input name="top_k" type="number" min="1" max="500" value="${v("top_k") || 10}"></label>
      <label>heads <input name="top_k_heads" type="number" min="1" max="32" value="${v("top_k_heads") || 3}"></label>
      <label>API key <input name="api_key" type="password" size="30" value="${esc(sessionStorage.getItem(KEY_STORE) || "")}"></label>
      <button>Compute</button></form><div id="qk-result"></div>`;
  const form = box.querySelector("#qk-form");
  const out = box.querySelector("#qk-result");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const key = f.get("api_key").trim();
    sessionStorage.setItem(KEY_STORE, key);
    const body = { top_k: Number(f.get("top_k") || 10) };
    if (f.get("from_circuit")) Object.assign(body, { from_circuit: true, top_k_heads: Number(f.get("top_k_heads") || 3) });
    else for (const k of QK_FIELDS) if (f.get(k) !== "") body[k] = Number(f.get(k));
    out.innerHTML = "<p class=\"qk-status\">queueing…</p>";
    try {
      const job = await sendJSON(`/graphs/${encodeURIComponent(f.get("graph_id").trim())}/qk`, "POST", body, key);
      out.dataset.analysisId = job.analysis_id;
      const a = await pollAnalysis(job, (st) => {
        if (!out.isConnected) return false;
        out.innerHTML = `<p class="qk-status">analysis <code>${esc(job.analysis_id)}</code>: ${esc(st.status)}…</p>`;
        return true;
      });
      if (!out.isConnected) return;
      if (a.status !== "done") {
        out.innerHTML = `<div class="error">analysis ${esc(job.analysis_id)} ${esc(a.status)}: ${esc(a.error)}</div>`;
        return;
      }
      const r = a.result;
      const toks = r.token_strings || [];
      out.innerHTML = `<p class="qk-status">analysis <code>${esc(job.analysis_id)}</code> done · graph
        <a href="#/graph/${encodeURIComponent(r.graph_id)}">${esc(r.graph_id)}</a> · ${r.n_layers} layers × ${r.n_heads} heads, ${r.n_positions} tokens</p>
        ${toks.length ? `<p class="tokens">${toks.map((t, i) => `<span class="chip" title="position ${i}">${i}: ${esc(t)}</span>`).join("")}</p>` : ""}
        ${r.heads.length ? r.heads.map(qkHeadTable).join("") : `<p class="qk-none">No head carries a cross-position edge of this graph
          (its strongest edges stay at their positions), so there is no head to decompose.</p>`}`;
    } catch (err) {
      out.innerHTML = errorBox(err);
    }
  });
  if (params.get("run") === "1") form.requestSubmit();
}
