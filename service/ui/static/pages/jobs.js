// Job list: jobs newest first, filtered by state; opens a job's progress page.

import { getJSON, withQuery } from "../api.js";
import { esc } from "../format.js";
import { SCHEMA } from "../schema.js";
import { errorBox, goOnSubmit, pager, progressCell, section, when } from "./common.js";

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
  goOnSubmit(el.querySelector("#job-filter"), "job", ["state"]);
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
