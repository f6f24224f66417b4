// Helpers the corpus-level pages share (one module per page in this folder). Each page reads the public API;
// an endpoint this server lacks is shown as "not available" with the route it would need, never invented data.

import { ApiError, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { SCHEMA } from "../schema.js";

export const TERMINAL = new Set([...SCHEMA.final_job_states, "failed"]); // jobs' final states, and a failed analysis

export function section(root, html) {
  const el = document.createElement("section");
  el.className = "page";
  el.innerHTML = html;
  root.replaceChildren(el);
  return el;
}

/** Submitting `form` opens `#/<route>?…` with the form's `fields` (trimmed) as the query. */
export function goOnSubmit(form, route, fields) {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(form);
    location.hash = `#/${route}${withQuery("", Object.fromEntries(fields.map((k) => [k, String(f.get(k) ?? "").trim()])))}`;
  });
}

export function errorBox(err) {
  return `<div class="error">${esc(err instanceof ApiError ? err.message : String(err))}</div>`;
}

export function notAvailable(what, route) {
  return `<div class="not-available"><b>${esc(what)}: not available.</b> This server's API has no ${esc(route)} endpoint
    (checked /openapi.json), so there is nothing to show.</div>`;
}


export function progressCell(j) {
  if (!j) return "<td><i>no job</i></td><td></td>";
  const pct = j.total ? (100 * (j.done + j.failed + j.cancelled)) / j.total : 0;
  return `<td><a href="#/job/${encodeURIComponent(j.job_id)}" class="job-state">${esc(j.state)}</a></td>
    <td><div class="progress small" title="${pct.toFixed(0)}%"><div class="bar" style="width:${pct.toFixed(1)}%"></div></div>
      <span class="counts">${j.done} done, ${j.failed} failed of ${j.total}</span></td>`;
}

export const pager = (base, params, offset, next, limit) => {
  const nav = (o, label) => `<a href="${base}${withQuery("", { ...params, offset: o })}">${label}</a>`;
  return `<p>${offset > 0 ? nav(Math.max(0, offset - limit), "← newer") : ""} ${next != null ? nav(next, "older →") : ""}</p>`;
};

export const when = (t) => (t == null ? "–" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19));

export function neighbourTable(items) {
  if (!items.length) return "<p><i>none in the stored aggregates</i></p>";
  return `<table class="data"><tr><th>feature</th><th>norm_w</th><th>Σw</th><th>Σ|w|</th><th>n</th></tr>${items.map((n) => `
    <tr><td><a href="#/feature/${encodeURIComponent(n.fkey)}">${esc(n.fkey)}</a></td><td class="num">${num(n.norm_w)}</td>
    <td class="num">${num(n.sum_w)}</td><td class="num">${num(n.sum_abs_w)}</td><td class="num">${num(n.n)}</td></tr>`).join("")}</table>`;
}
