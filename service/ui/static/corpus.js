// Corpus-level pages: graph list, job progress, feature page (and search), the global circuit around a
// feature, QK pairs of a head. Each reads the public API; an endpoint this server lacks is shown as
// "not available" with the route it would need, never with invented data.

import { ApiError, KEY_STORE, apiPaths, featureUrl, findGetEndpoint, getJSON, pollAnalysis, sendJSON, withQuery } from "./api.js";
import { histogramSVG, shade, timelineSVG } from "./plots.js";
import { SCHEMA } from "./schema.js";

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (v) => (v == null ? "–" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : esc(v));
const TERMINAL = new Set([...SCHEMA.final_job_states, "failed"]); // jobs' final states, and a failed analysis

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
  const filters = { corpus_id: params.get("corpus_id") || "", model: params.get("model") || "", text: params.get("text") || "" };
  const offset = Number(params.get("offset") || 0);
  const el = section(root, `<h2>Graphs</h2>
    <form class="inline" id="graph-filter"><label>corpus <input name="corpus_id" value="${esc(filters.corpus_id)}" placeholder="all corpora"></label>
    <label>model <input name="model" value="${esc(filters.model)}" placeholder="all models" size="14"></label>
    <label>prompt contains <input name="text" value="${esc(filters.text)}" size="20"></label>
    <button>Filter</button></form><div id="graph-table">loading…</div>`);
  el.querySelector("#graph-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = `#/graphs${withQuery("", Object.fromEntries(Object.keys(filters).map((k) => [k, f.get(k).trim()])))}`;
  });
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
      <td>${esc(g.model)}</td><td class="num">${fmt(g.n_nodes)}</td><td class="num">${fmt(g.n_edges)}</td></tr>`).join("");
    const nav = (o, label) => `<a href="#/graphs${withQuery("", { ...filters, offset: o })}">${label}</a>`;
    box.innerHTML = `<table class="data"><thead><tr><th>graph</th><th>prompt</th><th>target</th><th>corpus</th><th>model</th><th>nodes</th><th>edges</th></tr></thead>
      <tbody>${rows}</tbody></table><p>${offset > 0 ? nav(Math.max(0, offset - 50), "← previous") : ""}
      ${page.next_offset != null ? nav(page.next_offset, "next →") : ""}</p>`;
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}

// -- corpora and jobs ----------------------------------------------------------------------------------------

function progressCell(j) {
  if (!j) return "<td><i>no job</i></td><td></td>";
  const pct = j.total ? (100 * (j.done + j.failed + j.cancelled)) / j.total : 0;
  return `<td><a href="#/job/${encodeURIComponent(j.job_id)}" class="job-state">${esc(j.state)}</a></td>
    <td><div class="progress small" title="${pct.toFixed(0)}%"><div class="bar" style="width:${pct.toFixed(1)}%"></div></div>
      <span class="counts">${j.done} done, ${j.failed} failed of ${j.total}</span></td>`;
}

const pager = (base, params, offset, next, limit) => {
  const nav = (o, label) => `<a href="${base}${withQuery("", { ...params, offset: o })}">${label}</a>`;
  return `<p>${offset > 0 ? nav(Math.max(0, offset - limit), "← newer") : ""} ${next != null ? nav(next, "older →") : ""}</p>`;
};

const when = (t) => (t == null ? "–" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19));

export async function corpusList(root, params) {
  const offset = Number(params.get("offset") || 0);
  const el = section(root, `<h2>Corpora</h2><p>Newest first; the bar is the job's finished share (done + failed + cancelled of total).</p>
    <div id="corpus-table">loading…</div>`);
  const box = el.querySelector("#corpus-table");
  let timer = null;
  const load = async () => {
    if (!el.isConnected) return; // the reader left: stop refreshing
    try {
      const page = await getJSON(withQuery("/corpora", { offset, limit: 50 }));
      if (!page.items.length) {
        box.innerHTML = "<p>No corpora yet: submit one with <code>POST /corpora</code>.</p>";
        return;
      }
      box.innerHTML = `<table class="data"><thead><tr><th>corpus</th><th>name</th><th>model</th><th>dictionaries</th><th>prompts</th>
        <th>graphs</th><th>created</th><th>job</th><th>progress</th></tr></thead><tbody>${page.items.map((c) => `<tr class="corpus-row" data-id="${esc(c.corpus_id)}">
        <td><a href="#/graphs?corpus_id=${encodeURIComponent(c.corpus_id)}">${esc(c.corpus_id)}</a></td><td>${esc(c.name)}</td><td>${esc(c.model ?? "–")}</td>
        <td>${esc(c.dictionary_set ?? "–")}</td><td class="num">${fmt(c.n_prompts)}</td><td class="num">${c.n_graphs}</td><td>${when(c.created_at)}</td>
        ${progressCell(c.job)}</tr>`).join("")}</tbody></table>${pager("#/corpora", {}, offset, page.next_offset, 50)}`;
      // Refresh while any job on this page is still moving.
      if (page.items.some((c) => c.job && !TERMINAL.has(c.job.state))) timer = setTimeout(load, 3000);
    } catch (err) {
      box.innerHTML = errorBox(err);
    }
  };
  clearTimeout(timer);
  load();
}

const JOB_STATES = ["", ...SCHEMA.job_states]; // "" = any state

export async function jobList(root, params) {
  const state = params.get("state") || "";
  const offset = Number(params.get("offset") || 0);
  const el = section(root, `<h2>Jobs</h2>
    <form class="inline" id="job-go"><label>job id <input name="job" size="36"></label><button>Show</button></form>
    <form class="inline" id="job-filter"><label>state <select name="state">${JOB_STATES.map((s) => `<option value="${s}" ${s === state ? "selected" : ""}>${s || "any"}</option>`).join("")}</select></label>
      <button>Filter</button></form><div id="job-table">loading…</div>`);
  el.querySelector("#job-go").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = new FormData(e.target).get("job").trim();
    if (id) location.hash = `#/job/${encodeURIComponent(id)}`;
  });
  el.querySelector("#job-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/job${withQuery("", { state: new FormData(e.target).get("state") })}`;
  });
  const box = el.querySelector("#job-table");
  try {
    const page = await getJSON(withQuery("/jobs", { state, offset, limit: 50 }));
    box.innerHTML = page.items.length ? `<table class="data"><thead><tr><th>job</th><th>corpus</th><th>created</th><th>state</th><th>progress</th></tr></thead>
      <tbody>${page.items.map((j) => `<tr class="job-row" data-id="${esc(j.job_id)}"><td><a href="#/job/${encodeURIComponent(j.job_id)}">${esc(j.job_id)}</a></td>
      <td><a href="#/graphs?corpus_id=${encodeURIComponent(j.corpus_id)}">${esc(j.corpus_name || j.corpus_id)}</a></td><td>${when(j.created_at)}</td>
      ${progressCell(j)}</tr>`).join("")}</tbody></table>${pager("#/job", { state }, offset, page.next_offset, 50)}`
      : `<p>No jobs${state ? ` in state ${esc(state)}` : ""}.</p>`;
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
      const tl = await getJSON(`/jobs/${encodeURIComponent(jobId)}/timeline?bins=30`).catch(() => null);
      const pct = j.total ? (100 * (j.done + j.failed + j.cancelled)) / j.total : 0;
      box.innerHTML = `
        <div class="progress"><div class="bar" style="width:${pct.toFixed(1)}%"></div></div>
        <p><b class="job-state">${esc(j.state)}</b> · ${j.done} done, ${j.failed} failed, ${j.cancelled} cancelled,
          ${j.running} running, ${j.queued} queued of ${j.total}
          · ${j.throughput_per_min != null ? `${j.throughput_per_min.toFixed(1)} prompts/min` : "throughput –"}
          · ETA ${j.eta_s != null ? `${Math.round(j.eta_s)} s` : "–"}</p>
        <p>corpus <a href="#/graphs?corpus_id=${encodeURIComponent(j.corpus_id)}">${esc(j.corpus_id)}</a> · model ${esc(j.model)}
          · dictionaries ${esc(j.dictionary_set)}</p>
        ${tl && tl.bins.length ? `<div id="job-timeline">${timelineSVG(tl)}</div>` : ""}
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
  box.querySelector("#feature-q").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = `#/features${withQuery("", { q: f.get("q").trim(), corpus_id: f.get("corpus_id").trim() })}`;
  });
  if (!q) return;
  const out = box.querySelector("#feature-results");
  out.innerHTML = "searching…";
  const load = async (cursor) => {
    const res = await getJSON(withQuery("/features", { q, corpus_id: corpus, limit: 25, cursor }));
    const rows = res.items.map((f) => `<tr class="feature-hit"><td><a class="feature-result" href="#/feature/${encodeURIComponent(f.fkey)}${corpus ? `?corpus_id=${encodeURIComponent(corpus)}` : ""}">${esc(f.fkey)}</a></td>
      <td class="feature-label">${esc(f.label ?? "")}</td><td class="num">${f.n_graphs}</td><td class="num">${f.n_instances}</td><td class="num">${fmt(f.activation)}</td><td>${tokenList(f.top_tokens)}</td></tr>`).join("");
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
    const p = await getJSON(withQuery(featureUrl(fkey), { corpus_id: corpus, top: 12, neighbours: 10, before: 10, after: 4 }));
    el.querySelector("h2").insertAdjacentElement("afterend", labelBox(fkey, p.feature));
    // Every context token is shaded by the feature's activation there (scale: the strongest shown instance).
    const top = Math.max(0, ...p.top_activations.map((a) => a.activation ?? 0));
    const tok = (a, t) => `<span class="ctx-token${t.pos === a.pos ? " peak" : ""}" data-activation="${t.activation ?? ""}"
      style="background: rgba(255, 140, 0, ${shade(t.activation, top).toFixed(3)})" title="position ${t.pos}: ${t.activation == null ? "not active (or pruned)" : fmt(t.activation)}">${esc(t.token)}</span>`;
    const h = p.histogram;
    box.innerHTML = `
      <h3>Top activations</h3>${p.top_activations.length ? `<table class="data" id="top-activations"><tr><th>activation</th><th>context</th><th>graph</th></tr>
        ${p.top_activations.map((a) => `<tr class="activation-row"><td class="num">${fmt(a.activation)}</td><td class="context">${a.context.map((t) => tok(a, t)).join(" ")}</td>
        <td><a href="#/graph/${encodeURIComponent(a.graph_id)}">${esc(a.graph_id)}</a></td></tr>`).join("")}</table>` : "<p><i>no instances</i></p>"}
      <h3>Activations</h3><p class="density">${h.n_instances} stored instances${h.density != null ? ` over ${h.n_tokens} tokens of the corpus:
        fires on <b>${(100 * h.density).toPrecision(3)}%</b> of tokens` : ""}${h.mean != null ? ` · mean ${fmt(h.mean)}, max ${fmt(h.max)}` : ""}</p>
      ${h.n_instances ? histogramSVG(h.counts, h.bin_edges, { xLabel: "activation", yLabel: "instances" }) : ""}
      <h3>Logit effects <small>(direct path: decoder → final norm → unembedding)</small></h3><div id="logit-effects">loading…</div>
      <div class="cols"><div><h3>Upstream</h3>${neighbourTable(p.upstream)}</div><div><h3>Downstream</h3>${neighbourTable(p.downstream)}</div></div>
      <h3>Frequency</h3>${p.frequency.length ? `<table class="data"><tr><th>corpus</th><th>instances</th><th>graphs</th><th>fraction of graphs</th></tr>
        ${p.frequency.map((f) => `<tr><td>${esc(f.corpus_id)}</td><td class="num">${f.n_instances}</td><td class="num">${f.n_graphs} / ${f.corpus_graphs}</td>
        <td class="num">${fmt(f.graph_fraction)}</td></tr>`).join("")}</table>` : "<p><i>none</i></p>"}`;
    const le = box.querySelector("#logit-effects");
    try {
      le.innerHTML = logitEffects(await getJSON(withQuery(`${featureUrl(fkey)}/logit-effects`, { k: 10 })));
    } catch (err) {
      le.innerHTML = errorBox(err);
    }
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}

/** Promoted and suppressed tokens side by side, each with a bar proportional to |effect|. */
function logitEffects(r) {
  const top = Math.max(1e-12, ...[...r.promoted, ...r.suppressed].map((e) => Math.abs(e.effect)));
  const list = (items, cls) => `<table class="data logit-${cls}">${items.map((e) => `<tr class="logit-row" data-effect="${e.effect}">
    <td class="token">${esc(e.token ?? `#${e.token_id}`)}</td><td class="num">${fmt(e.effect)}</td>
    <td><span class="effect-bar ${cls}" style="width: ${(100 * Math.abs(e.effect) / top).toFixed(1)}px"></span></td></tr>`).join("")}</table>`;
  return `<div class="cols"><div><h4>promoted</h4>${list(r.promoted, "pos")}</div><div><h4>suppressed</h4>${list(r.suppressed, "neg")}</div></div>
    <p class="hint">Logit change per unit activation through the final norm (scale 1) and the de-meaned unembedding of ${esc(r.model_id)}; later layers are not included.</p>`;
}

/** The feature's label and note, and a form to set or clear them (a write key, kept in this tab). */
function labelBox(fkey, feature) {
  const box = document.createElement("div");
  box.id = "feature-label";
  const show = (f) => {
    box.innerHTML = `<p class="label-line">${f.label
      ? `<b class="label-text">${esc(f.label)}</b>${f.note ? ` <span class="label-note">— ${esc(f.note)}</span>` : ""}
         <small class="label-by">(key ${esc(f.label_by)}, ${new Date(f.label_at * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC)</small>`
      : "<i>no label</i>"}</p>
      <form class="inline" id="label-form"><label>label <input name="label" maxlength="120" size="24" value="${esc(f.label ?? "")}" required></label>
        <label>note <input name="note" size="40" value="${esc(f.note ?? "")}"></label>
        <label>API key <input name="api_key" type="password" size="24" value="${esc(sessionStorage.getItem(KEY_STORE) || "")}"></label>
        <button>Save label</button>${f.label ? ' <button type="button" id="label-clear">Clear</button>' : ""}</form><div class="label-error"></div>`;
    const form = box.querySelector("#label-form");
    const url = `${featureUrl(fkey)}/label`;
    const run = async (method, body) => {
      const key = new FormData(form).get("api_key").trim();
      sessionStorage.setItem(KEY_STORE, key);
      try {
        const out = await sendJSON(url, method, body, key);
        show(method === "PUT" ? { label: out.label, note: out.note, label_by: out.set_by, label_at: out.set_at } : {});
      } catch (err) {
        box.querySelector(".label-error").innerHTML = errorBox(err);
      }
    };
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const f2 = new FormData(form);
      run("PUT", { label: f2.get("label"), note: f2.get("note") });
    });
    box.querySelector("#label-clear")?.addEventListener("click", () => run("DELETE"));
  };
  show(feature);
  return box;
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
    <p>score <b class="qk-score">${fmt(h.score)}</b> (pre-softmax, scaling ${fmt(h.scaling)}) · attention ${fmt(h.attention)}
      ${h.credit != null ? ` · circuit credit ${fmt(h.credit)}` : ""}</p>
    <table class="data qk-table"><thead><tr><th>query side</th><th>key side</th><th>contribution</th></tr></thead><tbody>
    ${terms.map((t) => `<tr class="${t.cls}" data-v="${t.v}"><td>${node(t.q, t.qIn)}</td><td>${node(t.k, t.kIn)}</td>
      <td class="num"><span class="w ${t.v < 0 ? "neg" : "pos"}">${fmt(t.v)}</span></td></tr>`).join("")}
    <tr class="qk-sum"><td colspan="2"><b>sum</b> (= score)</td><td class="num"><b>${fmt(sum)}</b></td></tr></tbody></table>
    <div class="cols"><div><h4>Query-side nodes</h4><ol>${h.query_nodes.map((n) => `<li>${node(n.node_id, n.in_graph)} <span class="w ${n.contribution < 0 ? "neg" : "pos"}">${fmt(n.contribution)}</span></li>`).join("")}</ol></div>
    <div><h4>Key-side nodes</h4><ol>${h.key_nodes.map((n) => `<li>${node(n.node_id, n.in_graph)} <span class="w ${n.contribution < 0 ? "neg" : "pos"}">${fmt(n.contribution)}</span></li>`).join("")}</ol></div></div></div>`;
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
