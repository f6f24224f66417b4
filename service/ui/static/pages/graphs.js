// Graph list: complete graphs with their prompt text and targets (filters: corpus, model, prompt text).

import { getJSON, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { errorBox, goOnSubmit, section } from "./common.js";

export async function graphList(root, params) {
  const filters = { corpus_id: params.get("corpus_id") || "", model: params.get("model") || "", text: params.get("text") || "" };
  const offset = Number(params.get("offset") || 0);
  const el = section(root, `<h2>Graphs</h2>
    <form class="inline" id="graph-filter"><label>corpus <input name="corpus_id" value="${esc(filters.corpus_id)}" placeholder="all corpora"></label>
    <label>model <input name="model" value="${esc(filters.model)}" placeholder="all models" size="14"></label>
    <label>prompt contains <input name="text" value="${esc(filters.text)}" size="20"></label>
    <button>Filter</button></form><div id="graph-table">loading…</div>`);
  goOnSubmit(el.querySelector("#graph-filter"), "graphs", Object.keys(filters));
  const box = el.querySelector("#graph-table");
  try {
    const page = await getJSON(withQuery("/graphs", { ...filters, offset, limit: 50 }));
    if (!page.items.length) {
      box.innerHTML = "<p class=\"no-results\">No complete graphs match.</p>";
      return;
    }
    const rows = page.items.map((g) => `<tr class="graph-row" data-id="${esc(g.graph_id)}"><td><a class="graph-link" href="#/graph/${encodeURIComponent(g.graph_id)}">${esc(g.graph_id)}</a></td>
      <td class="prompt-text">${esc(g.prompt_text ?? g.prompt_id)}</td><td class="targets">${esc(g.targets.join(", "))}</td>
      <td><a href="#/graphs?corpus_id=${encodeURIComponent(g.corpus_id ?? "")}">${esc(g.corpus_id)}</a></td>
      <td>${esc(g.model)}</td><td class="num">${num(g.n_nodes)}</td><td class="num">${num(g.n_edges)}</td></tr>`).join("");
    const nav = (o, label) => `<a href="#/graphs${withQuery("", { ...filters, offset: o })}">${label}</a>`;
    box.innerHTML = `<table class="data"><thead><tr><th>graph</th><th>prompt</th><th>target</th><th>corpus</th><th>model</th><th>nodes</th><th>edges</th></tr></thead>
      <tbody>${rows}</tbody></table><p>${offset > 0 ? nav(Math.max(0, offset - 50), "← previous") : ""}
      ${page.next_offset != null ? nav(page.next_offset, "next →") : ""}</p>`;
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}
