// Corpus-level pages: graph list, job progress, feature page (and search), the global circuit around a
// feature, QK pairs of a head. Each reads the public API; an endpoint this server lacks is shown as
// "not available" with the route it would need, never with invented data.

import { ApiError, featureUrl, findGetEndpoint, getJSON, withQuery } from "./api.js";

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (v) => (v == null ? "–" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : esc(v));
const TERMINAL = new Set(["complete", "complete_with_failures", "cancelled", "failed"]);

function section(root, html) {
  const el = document.createElement("section");
  el.className = "page";
  el.innerHTML = html;
  root.replaceChildren(el);
  return el;
}

function errorBox(err) {
  return `<div class="error">${esc(err instanceof ApiError ? err.message : String(err))}</div>`;
}

export function notAvailable(what, route) {
  return `<div class="not-available"><b>${esc(what)}: not available.</b> This server's API has no ${esc(route)} endpoint
    (checked /openapi.json), so there is nothing to show.</div>`;
}

// -- graph list ----------------------------------------------------------------------------------------------

export async function graphList(root, params) {
  const corpus = params.get("corpus_id") || "";
  const offset = Number(params.get("offset") || 0);
  const el = section(root, `<h2>Graphs</h2>
    <form class="inline" id="graph-filter"><label>corpus <input name="corpus_id" value="${esc(corpus)}" placeholder="all corpora"></label>
    <button>Filter</button></form><div id="graph-table">loading…</div>`);
  el.querySelector("#graph-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/graphs${withQuery("", { corpus_id: new FormData(e.target).get("corpus_id") })}`;
  });
  const box = el.querySelector("#graph-table");
  try {
    const page = await getJSON(withQuery("/graphs", { corpus_id: corpus, offset, limit: 50 }));
    if (!page.items.length) {
      box.innerHTML = "<p>No complete graphs" + (corpus ? ` in corpus ${esc(corpus)}` : "") + ".</p>";
      return;
    }
    const rows = page.items.map((g) => `<tr><td><a class="graph-link" href="#/graph/${encodeURIComponent(g.graph_id)}">${esc(g.graph_id)}</a></td>
      <td><a href="#/graphs?corpus_id=${encodeURIComponent(g.corpus_id ?? "")}">${esc(g.corpus_id)}</a></td><td>${esc(g.prompt_id)}</td>
      <td>${esc(g.model)}</td><td class="num">${fmt(g.n_nodes)}</td><td class="num">${fmt(g.n_edges)}</td></tr>`).join("");
    const nav = (o, label) => `<a href="#/graphs${withQuery("", { corpus_id: corpus, offset: o })}">${label}</a>`;
    box.innerHTML = `<table class="data"><thead><tr><th>graph</th><th>corpus</th><th>prompt</th><th>model</th><th>nodes</th><th>edges</th></tr></thead>
      <tbody>${rows}</tbody></table><p>${offset > 0 ? nav(Math.max(0, offset - 50), "← previous") : ""}
      ${page.next_offset != null ? nav(page.next_offset, "next →") : ""}</p>`;
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}

// -- job progress --------------------------------------------------------------------------------------------

export function jobPage(root, jobId) {
  const el = section(root, `<h2>Job <code>${esc(jobId)}</code></h2><div id="job-box">loading…</div>`);
  const box = el.querySelector("#job-box");
  let timer = null;
  const poll = async () => {
    if (!el.isConnected) return; // the reader left this page: stop polling
    try {
      const j = await getJSON(`/jobs/${encodeURIComponent(jobId)}`);
      const pct = j.total ? (100 * (j.done + j.failed + j.cancelled)) / j.total : 0;
      box.innerHTML = `
        <div class="progress"><div class="bar" style="width:${pct.toFixed(1)}%"></div></div>
        <p><b class="job-state">${esc(j.state)}</b> · ${j.done} done, ${j.failed} failed, ${j.cancelled} cancelled,
          ${j.running} running, ${j.queued} queued of ${j.total}
          · ${j.throughput_per_min != null ? `${j.throughput_per_min.toFixed(1)} prompts/min` : "throughput –"}
          · ETA ${j.eta_s != null ? `${Math.round(j.eta_s)} s` : "–"}</p>
        <p>corpus <a href="#/graphs?corpus_id=${encodeURIComponent(j.corpus_id)}">${esc(j.corpus_id)}</a> · model ${esc(j.model)}
          · dictionaries ${esc(j.dictionary_set)}</p>
        ${TERMINAL.has(j.state) ? "" : '<button id="cancel-job">Cancel job</button>'}
        ${j.failures.length ? `<h3>Failures</h3><table class="data"><tr><th>#</th><th>prompt</th><th>error</th></tr>
          ${j.failures.map((f) => `<tr><td>${f.index}</td><td>${esc(f.prompt_id)}</td><td>${esc(f.error)}</td></tr>`).join("")}</table>` : ""}`;
      box.querySelector("#cancel-job")?.addEventListener("click", async () => {
        try {
          await getJSON(`/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
        } catch (err) {
          box.insertAdjacentHTML("beforeend", errorBox(err));
        }
        poll();
      });
      if (!TERMINAL.has(j.state)) timer = setTimeout(poll, 2000);
    } catch (err) {
      box.innerHTML = errorBox(err);
    }
  };
  clearTimeout(timer);
  poll();
}

// -- features ------------------------------------------------------------------------------------------------

export async function featureSearch(root, params) {
  const q = params.get("q") || "";
  const el = section(root, `<h2>Features</h2>
    <form class="inline" id="feature-go"><label>feature key <input name="fkey" size="32" placeholder="dset/L1.mlp#17"></label>
      <button>Open</button></form><div id="feature-search"></div>`);
  el.querySelector("#feature-go").addEventListener("submit", (e) => {
    e.preventDefault();
    const fkey = new FormData(e.target).get("fkey").trim();
    if (fkey) location.hash = `#/feature/${encodeURIComponent(fkey)}`;
  });
  const box = el.querySelector("#feature-search");
  // A search route would be GET /features (with a query parameter); the API may add one later.
  const ep = await findGetEndpoint((p) => p === "/features" || p === "/features/search");
  if (!ep) {
    box.innerHTML = notAvailable("Feature search by text", "GET /features?q=…") +
      "<p>Open a feature by its exact key above (keys are shown in every graph's node panel).</p>";
    return;
  }
  const param = (ep.op.parameters || []).find((x) => x.in === "query" && /^(q|query|search|text)$/.test(x.name));
  if (!param) {
    box.innerHTML = notAvailable("Feature search by text", `a text parameter on GET ${ep.path}`);
    return;
  }
  box.innerHTML = `<form class="inline" id="feature-q"><input name="q" value="${esc(q)}" size="30"><button>Search</button></form><div id="feature-results"></div>`;
  box.querySelector("#feature-q").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/features${withQuery("", { q: new FormData(e.target).get("q") })}`;
  });
  if (!q) return;
  try {
    const res = await getJSON(withQuery(ep.path, { [param.name]: q }));
    const items = Array.isArray(res) ? res : res.items || [];
    box.querySelector("#feature-results").innerHTML = items.length
      ? `<ul>${items.map((f) => `<li><a href="#/feature/${encodeURIComponent(f.fkey)}">${esc(f.fkey)}</a></li>`).join("")}</ul>`
      : "<p>No matches.</p>";
  } catch (err) {
    box.querySelector("#feature-results").innerHTML = errorBox(err);
  }
}

function neighbourTable(items) {
  if (!items.length) return "<p><i>none in the stored aggregates</i></p>";
  return `<table class="data"><tr><th>feature</th><th>norm_w</th><th>Σw</th><th>Σ|w|</th><th>n</th></tr>${items.map((n) => `
    <tr><td><a href="#/feature/${encodeURIComponent(n.fkey)}">${esc(n.fkey)}</a></td><td class="num">${fmt(n.norm_w)}</td>
    <td class="num">${fmt(n.sum_w)}</td><td class="num">${fmt(n.sum_abs_w)}</td><td class="num">${fmt(n.n)}</td></tr>`).join("")}</table>`;
}

export async function featurePage(root, fkey, params) {
  const corpus = params.get("corpus_id") || "";
  const el = section(root, `<h2>Feature <code>${esc(fkey)}</code></h2>
    <p><a href="#/global?fkey=${encodeURIComponent(fkey)}${corpus ? `&corpus_id=${encodeURIComponent(corpus)}` : ""}">global circuit around it</a></p>
    <div id="feature-box">loading…</div>`);
  const box = el.querySelector("#feature-box");
  try {
    const p = await getJSON(withQuery(featureUrl(fkey), { corpus_id: corpus, top: 12, neighbours: 10 }));
    const ctx = (a) => a.context.map((t) => (t.pos === a.pos ? `<mark>${esc(t.token)}</mark>` : esc(t.token))).join(" ");
    box.innerHTML = `
      <h3>Top activations</h3>${p.top_activations.length ? `<table class="data"><tr><th>activation</th><th>context</th><th>graph</th></tr>
        ${p.top_activations.map((a) => `<tr><td class="num">${fmt(a.activation)}</td><td>${ctx(a)}</td>
        <td><a href="#/graph/${encodeURIComponent(a.graph_id)}">${esc(a.graph_id)}</a></td></tr>`).join("")}</table>` : "<p><i>no instances</i></p>"}
      <div class="cols"><div><h3>Upstream</h3>${neighbourTable(p.upstream)}</div><div><h3>Downstream</h3>${neighbourTable(p.downstream)}</div></div>
      <h3>Frequency</h3>${p.frequency.length ? `<table class="data"><tr><th>corpus</th><th>instances</th><th>graphs</th><th>fraction of graphs</th></tr>
        ${p.frequency.map((f) => `<tr><td>${esc(f.corpus_id)}</td><td class="num">${f.n_instances}</td><td class="num">${f.n_graphs} / ${f.corpus_graphs}</td>
        <td class="num">${fmt(f.graph_fraction)}</td></tr>`).join("")}</table>` : "<p><i>none</i></p>"}`;
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}

// -- global circuit around a feature -------------------------------------------------------------------------

function starSVG(fkey, up, down) {
  // Upstream features on the left, downstream on the right, edge width by |norm_w| (or Σ|w| without a norm).
  const W = 760;
  const rowH = 24;
  const H = Math.max(up.length, down.length, 1) * rowH + 40;
  const val = (n) => Math.abs(n.norm_w ?? n.sum_abs_w ?? 0);
  const max = Math.max(1e-12, ...up.map(val), ...down.map(val));
  const cx = W / 2;
  const cy = H / 2;
  const side = (items, x, anchor) => items.map((n, k) => {
    const y = 20 + k * rowH + rowH / 2;
    const sign = (n.norm_w ?? n.sum_w) < 0;
    return `<line x1="${x}" y1="${y}" x2="${cx}" y2="${cy}" stroke="${sign ? "#c82828" : "#2166ac"}" stroke-opacity="0.7" stroke-width="${(0.5 + 5 * val(n) / max).toFixed(2)}"/>
      <circle cx="${x}" cy="${y}" r="4" fill="#5b6fb3"/><text x="${anchor === "end" ? x - 8 : x + 8}" y="${y}" font-size="11" text-anchor="${anchor}" dominant-baseline="middle">${esc(n.fkey)}</text>`;
  }).join("");
  return `<svg class="star" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${side(up, 230, "end")}${side(down, W - 230, "start")}
    <circle cx="${cx}" cy="${cy}" r="8" fill="#8e44ad"/><text x="${cx}" y="${cy - 14}" text-anchor="middle" font-size="12" font-weight="bold" stroke="white" stroke-width="4" paint-order="stroke">${esc(fkey)}</text></svg>`;
}

export async function globalPage(root, params) {
  const fkey = params.get("fkey") || "";
  const corpus = params.get("corpus_id") || "";
  const el = section(root, `<h2>Global circuit around a feature</h2>
    <form class="inline" id="global-form"><label>feature <input name="fkey" value="${esc(fkey)}" size="32" placeholder="dset/L1.mlp#17"></label>
      <label>corpus <input name="corpus_id" value="${esc(corpus)}" placeholder="all corpora"></label><button>Show</button></form>
    <div id="global-box"></div>`);
  el.querySelector("#global-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = `#/global${withQuery("", { fkey: f.get("fkey").trim(), corpus_id: f.get("corpus_id").trim() })}`;
  });
  if (!fkey) return;
  const box = el.querySelector("#global-box");
  box.textContent = "loading…";
  try {
    const q = (direction) => getJSON(withQuery("/global/neighbours", { fkey, corpus_id: corpus, direction, limit: 15 }));
    const [up, down, vw] = await Promise.all([q("upstream"), q("downstream"),
      getJSON(withQuery("/global/virtual-weights", { fkey, direction: "upstream", limit: 15 })).catch((err) => err)]);
    box.innerHTML = `<p>Corpus-aggregated direct effects (norm_w = Σw / the source's activation mass)${corpus ? ` in ${esc(corpus)}` : " over every corpus"}.</p>
      ${starSVG(fkey, up.items, down.items)}
      <div class="cols"><div><h3>Upstream</h3>${neighbourTable(up.items)}</div><div><h3>Downstream</h3>${neighbourTable(down.items)}</div></div>
      <h3>Virtual weights (upstream, prompt-independent)</h3>${vw instanceof Error ? errorBox(vw)
        : vw.length ? `<table class="data"><tr><th>feature</th><th>w</th></tr>${vw.map((v) => `<tr><td>${esc(v.fkey)}</td><td class="num">${fmt(v.w)}</td></tr>`).join("")}</table>`
          : "<p><i>none stored (POST /global/virtual-weights computes them)</i></p>"}`;
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}

// -- QK pairs of a head --------------------------------------------------------------------------------------

export async function qkPage(root, params) {
  const el = section(root, "<h2>QK pairs of a head</h2><div id=\"qk-box\">checking the API…</div>");
  const box = el.querySelector("#qk-box");
  const ep = await findGetEndpoint((p) => /(^|\/)qk(\/|$)/i.test(p));
  if (!ep) {
    box.innerHTML = notAvailable("QK attribution", "GET …/qk (query/key node pairs of a head's attention score)");
    return;
  }
  // Build the form from the route's own parameters so the page follows the API as it is.
  const names = (ep.op.parameters || []).map((p) => ({ name: p.name, where: p.in, required: p.required }));
  box.innerHTML = `<form class="inline" id="qk-form">${names.map((p) => `<label>${esc(p.name)}${p.required ? "*" : ""}
    <input name="${esc(p.name)}" value="${esc(params.get(p.name) || "")}" size="10"></label>`).join(" ")}<button>Query</button></form><div id="qk-result"></div>`;
  box.querySelector("#qk-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    let path = ep.path;
    const query = {};
    for (const p of names) {
      const v = f.get(p.name);
      if (p.where === "path") path = path.replace(`{${p.name}}`, encodeURIComponent(v));
      else query[p.name] = v;
    }
    const out = box.querySelector("#qk-result");
    try {
      const res = await getJSON(withQuery(path, query));
      const rows = Array.isArray(res) ? res : res.pairs || res.items || [];
      if (!rows.length) {
        out.innerHTML = `<pre>${esc(JSON.stringify(res, null, 1))}</pre>`;
        return;
      }
      const cols = Object.keys(rows[0]);
      out.innerHTML = `<table class="data"><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>${rows.map((r) => `<tr>${cols.map((c) => `<td>${fmt(r[c])}</td>`).join("")}</tr>`).join("")}</table>`;
    } catch (err) {
      out.innerHTML = errorBox(err);
    }
  });
}
