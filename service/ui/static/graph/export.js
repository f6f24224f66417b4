// Exports of the current view: SVG (vector, same layout/shapes/colours as the canvas), PNG (the canvases
// composited), and Neuronpedia graph JSON (the API's export of the same pruning, plus this view's pins,
// supernodes and clicked node in qParams, as Neuronpedia's own viewer stores them).

import { getJSON, withQuery } from "../api.js";
import { esc } from "../format.js";
import { COLORS, DENSE_EDGES, edgeStyle, shapeOf } from "./render.js";

/** The scene as a standalone SVG document (one <g class="node"> per node, one <line class="edge"> per edge). */
export function sceneToSVG(scene, title = "") {
  const L = scene.layout;
  const pad = { left: 70, right: 20, top: 30, bottom: 40 };
  const W = L.width + pad.left + pad.right;
  const H = L.height + pad.top + pad.bottom;
  const X = (i) => (L.x[i] + pad.left).toFixed(2);
  const Y = (i) => (L.y[i] + pad.top).toFixed(2);
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`);
  out.push(`<title>${esc(title)}</title><rect width="100%" height="100%" fill="white"/>`);
  for (const row of L.rows) {
    out.push(`<text x="${pad.left - 8}" y="${(row.y + pad.top).toFixed(1)}" font-size="11" text-anchor="end" dominant-baseline="middle" fill="#555">${esc(row.label)}</text>`);
  }
  for (const col of L.cols) {
    const label = col.pos < 0 ? "·" : (scene.tokens[col.pos] ?? `p${col.pos}`);
    out.push(`<text class="token" x="${(col.x + pad.left).toFixed(1)}" y="${(L.height + pad.top + 16).toFixed(1)}" font-size="11" text-anchor="middle">${esc(label)}</text>`);
  }
  out.push('<g class="edges" stroke-linecap="round">');
  for (let k = 0; k < scene.w.length; k++) {
    const st = edgeStyle(scene.w[k], scene.maxAbs ?? 0, scene.w.length > DENSE_EDGES);
    const [r, g, b] = st.neg ? COLORS.neg : COLORS.pos;
    const a = scene.src[k];
    const d = scene.dst[k];
    out.push(`<line class="edge" x1="${X(a)}" y1="${Y(a)}" x2="${X(d)}" y2="${Y(d)}" stroke="rgb(${r},${g},${b})" stroke-opacity="${st.alpha.toFixed(2)}" stroke-width="${st.width.toFixed(2)}"><title>${esc(scene.nodes[a].node_id)} → ${esc(scene.nodes[d].node_id)}: ${scene.w[k]}</title></line>`);
  }
  out.push("</g><g class=\"nodes\">");
  scene.nodes.forEach((n, i) => {
    const fill = COLORS[n.kind] || COLORS.feature;
    const r = n.kind === "supernode" ? 7 : 4;
    const shape = shapeOf(n.kind);
    let el;
    if (shape === "square") el = `<rect x="${(L.x[i] + pad.left - r).toFixed(2)}" y="${(L.y[i] + pad.top - r).toFixed(2)}" width="${2 * r}" height="${2 * r}"/>`;
    else if (shape === "diamond") {
      const q = r * 1.35;
      const cx = L.x[i] + pad.left;
      const cy = L.y[i] + pad.top;
      el = `<polygon points="${cx},${cy - q} ${cx + q},${cy} ${cx},${cy + q} ${cx - q},${cy}"/>`;
    } else el = `<circle cx="${X(i)}" cy="${Y(i)}" r="${r}"/>`;
    const label = n.kind === "supernode" ? `<text x="${(L.x[i] + pad.left + 10).toFixed(1)}" y="${(L.y[i] + pad.top - 8).toFixed(1)}" font-size="11" fill="${COLORS.supernode}">${esc(n.label)}</text>` : "";
    out.push(`<g class="node" data-id="${esc(n.node_id)}" fill="${fill}" stroke="white" stroke-width="0.8">${el}<title>${esc(n.node_id)} act=${n.activation ?? ""} infl=${n.influence ?? ""}</title>${label}</g>`);
  });
  out.push("</g></svg>");
  return out.join("\n");
}

/** PNG data URL of the canvases stacked as seen (white background). */
export function canvasesToPNG(base, overlay) {
  const c = document.createElement("canvas");
  c.width = base.width;
  c.height = base.height;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(base, 0, 0);
  ctx.drawImage(overlay, 0, 0);
  return c.toDataURL("image/png");
}

/** Neuronpedia graph JSON of graph_id under `pruning`, with this view's pins/supernodes/clicked node. */
export async function neuronpediaJSON(graphId, pruning, { pinned = [], supernodes = [], clicked = "" } = {}) {
  const doc = await getJSON(withQuery(`/graphs/${encodeURIComponent(graphId)}/circuit`, { ...pruning, format: "neuronpedia" }));
  doc.qParams = {
    ...(doc.qParams || {}),
    pinnedIds: [...pinned],
    // Neuronpedia's supernode format: [name, member node ids...]
    supernodes: supernodes.map((s) => [s.name, ...s.members]),
    clickedId: clicked || "",
  };
  return doc;
}

export function download(filename, data, type) {
  const url = data.startsWith && data.startsWith("data:") ? data : URL.createObjectURL(new Blob([data], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  if (!url.startsWith("data:")) setTimeout(() => URL.revokeObjectURL(url), 1000);
}
