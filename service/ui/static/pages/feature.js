// Feature page: label form, top activations in context (shaded), activation histogram, logit effects,
// AGG neighbours.

import { featureUrl, getJSON, KEY_STORE, sendJSON, withQuery } from "../api.js";
import { esc, num } from "../format.js";
import { histogramSVG, shade } from "../plots.js";
import { errorBox, neighbourTable, section } from "./common.js";

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
      style="background: rgba(255, 140, 0, ${shade(t.activation, top).toFixed(3)})" title="position ${t.pos}: ${t.activation == null ? "not active (or pruned)" : num(t.activation)}">${esc(t.token)}</span>`;
    const h = p.histogram;
    box.innerHTML = `
      <h3>Top activations</h3>${p.top_activations.length ? `<table class="data" id="top-activations"><tr><th>activation</th><th>context</th><th>graph</th></tr>
        ${p.top_activations.map((a) => `<tr class="activation-row"><td class="num">${num(a.activation)}</td><td class="context">${a.context.map((t) => tok(a, t)).join(" ")}</td>
        <td><a href="#/graph/${encodeURIComponent(a.graph_id)}">${esc(a.graph_id)}</a></td></tr>`).join("")}</table>` : "<p><i>no instances</i></p>"}
      <h3>Activations</h3><p class="density">${h.n_instances} stored instances${h.density != null ? ` over ${h.n_tokens} tokens of the corpus:
        fires on <b>${(100 * h.density).toPrecision(3)}%</b> of tokens` : ""}${h.mean != null ? ` · mean ${num(h.mean)}, max ${num(h.max)}` : ""}</p>
      ${h.n_instances ? histogramSVG(h.counts, h.bin_edges, { xLabel: "activation", yLabel: "instances" }) : ""}
      <h3>Logit effects <small>(direct path: decoder → final norm → unembedding)</small></h3><div id="logit-effects">loading…</div>
      <div class="cols"><div><h3>Upstream</h3>${neighbourTable(p.upstream)}</div><div><h3>Downstream</h3>${neighbourTable(p.downstream)}</div></div>
      <h3>Frequency</h3>${p.frequency.length ? `<table class="data"><tr><th>corpus</th><th>instances</th><th>graphs</th><th>fraction of graphs</th></tr>
        ${p.frequency.map((f) => `<tr><td>${esc(f.corpus_id)}</td><td class="num">${f.n_instances}</td><td class="num">${f.n_graphs} / ${f.corpus_graphs}</td>
        <td class="num">${num(f.graph_fraction)}</td></tr>`).join("")}</table>` : "<p><i>none</i></p>"}`;
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
    <td class="token">${esc(e.token ?? `#${e.token_id}`)}</td><td class="num">${num(e.effect)}</td>
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
