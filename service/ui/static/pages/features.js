// Feature search: ranked hits with labels and top tokens; "more" follows next_cursor.

import { findGetEndpoint, getJSON, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { errorBox, goOnSubmit, notAvailable, section } from "./common.js";

const tokenList = (tokens) => (tokens || []).map((t) => `<span class="chip" title="${t.n} of its strongest instances">${esc(t.token)} <small>×${t.n}</small></span>`).join("");

export async function featureSearch(root, params) {
  const q = params.get("q") || "";
  const corpus = params.get("corpus_id") || "";
  const el = section(root, `<h2>Features</h2>
    <form class="inline" id="feature-go"><label>feature key <input name="fkey" size="32" placeholder="dset/L1.mlp#17"></label>
      <button>Open</button></form><div id="feature-search"></div>`);
  el.querySelector("#feature-go").addEventListener("submit", (e) => {
    e.preventDefault();
    const fkey = new FormData(e.target).get("fkey").trim();
    if (fkey) location.hash = `#/feature/${encodeURIComponent(fkey)}`;
  });
  const box = el.querySelector("#feature-search");
  const ep = await findGetEndpoint((p) => p === "/features");
  if (!ep || !(ep.op.parameters || []).some((x) => x.in === "query" && x.name === "q")) {
    box.innerHTML = notAvailable("Feature search by text", "GET /features?q=…") +
      "<p>Open a feature by its exact key above (keys are shown in every graph's node panel).</p>";
    return;
  }
  box.innerHTML = `<form class="inline" id="feature-q"><label>search <input name="q" value="${esc(q)}" size="30"
      placeholder="L2.mlp · mlp/L2/ · L2:123 · dset/L1.mlp#17 · label:mover · a token"></label>
    <label>corpus <input name="corpus_id" value="${esc(corpus)}" placeholder="all corpora"></label><button>Search</button></form>
    <p class="hint">A key or prefix finds features by dictionary, layer and index (ranked by the graphs they appear in, then mean
      activation); <code>label:</code> and some words finds labelled features; anything else finds the features that fire on that token (ranked by graphs, then their largest activation there).</p>
    <div id="feature-results"></div>`;
  goOnSubmit(box.querySelector("#feature-q"), "features", ["q", "corpus_id"]);
  if (!q) return;
  const out = box.querySelector("#feature-results");
  out.innerHTML = "searching…";
  const load = async (cursor) => {
    const res = await getJSON(withQuery("/features", { q, corpus_id: corpus, limit: 25, cursor }));
    const rows = res.items.map((f) => `<tr class="feature-hit"><td><a class="feature-result" href="#/feature/${encodeURIComponent(f.fkey)}${corpus ? `?corpus_id=${encodeURIComponent(corpus)}` : ""}">${esc(f.fkey)}</a></td>
      <td class="feature-label">${esc(f.label ?? "")}</td><td class="num">${f.n_graphs}</td><td class="num">${f.n_instances}</td><td class="num">${num(f.activation)}</td><td>${tokenList(f.top_tokens)}</td></tr>`).join("");
    return { res, rows };
  };
  try {
    const { res, rows } = await load(null);
    const how = res.query.mode === "token" ? `features firing on the token <b>${esc(res.query.token)}</b>`
      : res.query.label ? `features labelled “${esc(res.query.label)}”` : "features by key";
    if (!res.items.length) {
      out.innerHTML = `<p class="no-results">No ${how}${corpus ? ` in corpus ${esc(corpus)}` : ""}.</p>`;
      return;
    }
    out.innerHTML = `<p>${how}${corpus ? ` in corpus ${esc(corpus)}` : ""}</p><table class="data" id="feature-table"><thead><tr><th>feature</th><th>label</th>
      <th>${res.query.mode === "token" ? "graphs (on token)" : "graphs"}</th><th>instances</th><th>${res.query.mode === "token" ? "max activation" : "mean activation"}</th>
      <th>fires on</th></tr></thead><tbody>${rows}</tbody></table><p><button id="feature-more" ${res.next_cursor ? "" : "hidden"}>more</button></p>`;
    let next = res.next_cursor;
    const more = out.querySelector("#feature-more");
    more.addEventListener("click", async () => {
      more.disabled = true;
      try {
        const page = await load(next);
        out.querySelector("#feature-table tbody").insertAdjacentHTML("beforeend", page.rows);
        next = page.res.next_cursor;
        more.hidden = !next;
      } catch (err) {
        out.insertAdjacentHTML("beforeend", errorBox(err));
      }
      more.disabled = false;
    });
  } catch (err) {
    out.innerHTML = errorBox(err);
  }
}
