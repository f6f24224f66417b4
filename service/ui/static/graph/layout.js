// Where each node of a circuit goes: one row per (layer, site) from the embeddings at the bottom to the
// logits at the top, one column per token position (the prompt's tokens sit under their columns).
// Pure functions on plain data, in "world" units; the renderer maps world -> screen with zoom and pan.

import { SCHEMA, kindInfo } from "../schema.js";

export const ROW_HEIGHT = 60;
export const SLOT = 14; // world units between neighbouring nodes of one cell
const MIN_COL = 46;

const SITE_ORDER = Object.fromEntries(SCHEMA.sites.map((s, i) => [s, i]));
const SITE_IN_NAME = new RegExp(`\\.(${SCHEMA.sites.join("|")})\\b`);
const LAST_SITE = SCHEMA.sites[SCHEMA.sites.length - 1];

/** The site ("attn" / "mlp") of a feature or error node, from its dictionary name or typed id. */
export function siteOf(node) {
  const m = SITE_IN_NAME.exec(node.dictionary || node.node_id || "");
  return m ? m[1] : LAST_SITE;
}

function rowKey(node) {
  switch (kindInfo(node.kind).row) {
    case "E":
      return { key: "E", order: -1, label: "emb" };
    case "T":
      return { key: "T", order: 1e9, label: "logits" };
    default: {
      const layer = node.layer ?? 0;
      const site = siteOf(node);
      return { key: `L${layer}.${site}`, order: layer * SCHEMA.sites.length + (SITE_ORDER[site] ?? SCHEMA.sites.length - 1), label: `L${layer}.${site}` };
    }
  }
}

/** Prompt tokens by position: the graph's provenance if it has them, else the embedding nodes' tokens. */
export function promptTokens(circuit) {
  const prov = (circuit.graph && circuit.graph.provenance) || {};
  const fromProv = prov.token_strings || prov.prompt_tokens;
  const tokens = Array.isArray(fromProv) ? fromProv.map(String) : [];
  for (const n of circuit.nodes) {
    if (kindInfo(n.kind).token && n.pos != null && n.token != null && tokens[n.pos] == null) {
      tokens[n.pos] = n.token;
    }
  }
  return tokens;
}

/**
 * Layout of `nodes` (objects with node_id, kind, layer, pos, influence):
 * returns { x: Float64Array, y: Float64Array, index: Map(id -> i), rows: [{label, y}], cols: [{pos, x, width}],
 * width, height }. Within a cell (row, position) nodes are ordered by |influence| (strongest first) and
 * wrap onto extra lines when the column is full; column widths follow the busiest cell of the column.
 */
export function computeLayout(nodes, tokens) {
  const rowInfo = new Map();
  const cells = new Map();
  let maxPos = tokens.length - 1;
  let hasNullPos = false;
  nodes.forEach((n, i) => {
    const r = rowKey(n);
    if (!rowInfo.has(r.key)) rowInfo.set(r.key, r);
    if (n.pos == null) hasNullPos = true;
    else maxPos = Math.max(maxPos, n.pos);
    const ck = `${r.key}|${n.pos ?? -1}`;
    if (!cells.has(ck)) cells.set(ck, []);
    cells.get(ck).push(i);
  });
  const rows = [...rowInfo.values()].sort((a, b) => a.order - b.order);
  const rowIndex = new Map(rows.map((r, i) => [r.key, i]));
  const positions = [];
  if (hasNullPos) positions.push(-1); // position-free nodes (the bias leaf) get their own column on the left
  for (let p = 0; p <= maxPos; p++) positions.push(p);

  // Busiest cell per column -> width; very busy cells wrap instead of stretching the picture forever.
  const busiest = new Map(positions.map((p) => [p, 1]));
  for (const [ck, members] of cells) {
    const p = Number(ck.split("|")[1]);
    busiest.set(p, Math.max(busiest.get(p), members.length));
  }
  const cols = [];
  let x = 0;
  const maxPerLine = new Map();
  for (const p of positions) {
    const count = busiest.get(p);
    const perLine = Math.min(count, Math.max(3, Math.ceil(Math.sqrt(count) * 3)));
    const width = Math.max(MIN_COL, perLine * SLOT + SLOT);
    cols.push({ pos: p, x: x + width / 2, width, left: x });
    maxPerLine.set(p, perLine);
    x += width;
  }
  const colOf = new Map(cols.map((c) => [c.pos, c]));
  // Rows as tall as their busiest cell needs (lines of SLOT), at least ROW_HEIGHT.
  const rowLines = rows.map(() => 1);
  for (const [ck, members] of cells) {
    const [rk, ps] = ck.split("|");
    const lines = Math.ceil(members.length / maxPerLine.get(Number(ps)));
    const ri = rowIndex.get(rk);
    rowLines[ri] = Math.max(rowLines[ri], lines);
  }
  const rowOut = [];
  let y = 0; // world y grows downwards: the last row (logits) is drawn first, at the top
  for (let ri = rows.length - 1; ri >= 0; ri--) {
    const h = Math.max(ROW_HEIGHT, rowLines[ri] * SLOT + SLOT);
    rowOut[ri] = { label: rows[ri].label, y: y + h / 2, top: y, height: h };
    y += h;
  }

  const X = new Float64Array(nodes.length);
  const Y = new Float64Array(nodes.length);
  const score = (i) => Math.abs(nodes[i].influence ?? 0);
  for (const [ck, members] of cells) {
    const [rk, ps] = ck.split("|");
    const col = colOf.get(Number(ps));
    const row = rowOut[rowIndex.get(rk)];
    members.sort((a, b) => score(b) - score(a) || (nodes[a].node_id < nodes[b].node_id ? -1 : 1));
    const perLine = maxPerLine.get(Number(ps));
    const lines = Math.ceil(members.length / perLine);
    members.forEach((i, k) => {
      const line = Math.floor(k / perLine);
      const inLine = Math.min(perLine, members.length - line * perLine);
      const slotInLine = k % perLine;
      X[i] = col.x + (slotInLine - (inLine - 1) / 2) * SLOT;
      Y[i] = row.y + (line - (lines - 1) / 2) * SLOT;
    });
  }
  const index = new Map(nodes.map((n, i) => [n.node_id, i]));
  return { x: X, y: Y, index, rows: rowOut, cols, width: x, height: y };
}
