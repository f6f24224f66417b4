// Corpus list: every corpus newest first, with its job's state and a progress bar (refreshes while a job moves).

import { getJSON, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { TERMINAL, errorBox, pager, progressCell, section, when } from "./common.js";

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
        <td>${esc(c.dictionary_set ?? "–")}</td><td class="num">${num(c.n_prompts)}</td><td class="num">${c.n_graphs}</td><td>${when(c.created_at)}</td>
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
