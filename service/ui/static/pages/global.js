// Global circuit around a feature: corpus-aggregated neighbours and virtual-weight neighbours, drawn as a star.

import { getJSON, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { errorBox, goOnSubmit, neighbourTable, section } from "./common.js";

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
  goOnSubmit(el.querySelector("#global-form"), "global", ["fkey", "corpus_id"]);
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
        : vw.length ? `<table class="data"><tr><th>feature</th><th>w</th></tr>${vw.map((v) => `<tr><td>${esc(v.fkey)}</td><td class="num">${num(v.w)}</td></tr>`).join("")}</table>`
          : "<p><i>none stored (POST /global/virtual-weights computes them)</i></p>"}`;
  } catch (err) {
    box.innerHTML = errorBox(err);
  }
}
