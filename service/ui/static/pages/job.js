// One job's progress: polls /jobs/{id}, cancel, and the plot of prompts/min and failures over time.

import { getJSON } from "../api.js";
import { esc } from "../format.js";
import { timelineSVG } from "../plots.js";
import { TERMINAL, errorBox, section } from "./common.js";

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
