// Canvas renderer of a laid-out circuit. Two stacked canvases: the base (all edges, nodes, labels; redrawn on
// zoom, pan or new data) and an overlay (hover, selection, pins; redrawn on every pointer move, cheap).
// Edges are batched into a few (sign, width) buckets with one stroke each, nodes into one path per shape,
// so a frame costs a handful of canvas calls whatever the graph size; that is what keeps 5,000 nodes
// interactive. Lines keep their pixel width under zoom because coordinates are mapped by hand.

import { SCHEMA, kindInfo } from "../schema.js";
import { SLOT } from "./layout.js";

// Colours by node kind, edge sign (RGB) and for supernodes: all from the API's schema (service/ui/schema.py).
export const COLORS = {
  ...Object.fromEntries(Object.entries(SCHEMA.kinds).map(([kind, info]) => [kind, info.colour])),
  pos: SCHEMA.edge_rgb.pos,
  neg: SCHEMA.edge_rgb.neg,
  supernode: SCHEMA.supernode_colour,
};
const WIDTH_BINS = 6;
// Above this many drawn items, zoom and pan move the last full picture with a CSS transform (the compositor
// does it for free) and the full redraw waits until the pointer rests: rastering 50k antialiased lines in
// software takes 0.5-2 s on this machine, far too slow per frame.
const BITMAP_INTERACTION_ABOVE = 4000;
const SETTLE_MS = 160;
export const DENSE_EDGES = 5000;
const MARGIN = { left: 70, right: 20, top: 20, bottom: 46 };

/** Shape drawn for a node kind (also used by the SVG export, so both pictures agree). */
export function shapeOf(kind) {
  return kind === "supernode" ? "circle" : kindInfo(kind).shape;
}

/** Bucket of an edge for drawing: [sign 0/1][width bin], width and opacity growing with |w| / max|w|. */
export function edgeStyle(w, maxAbs, dense = false) {
  const f = maxAbs > 0 ? Math.min(1, Math.abs(w) / maxAbs) : 0;
  const bin = Math.min(WIDTH_BINS - 1, Math.floor(Math.sqrt(f) * WIDTH_BINS));
  const t = (bin + 1) / WIDTH_BINS;
  // Dense graphs: thinner, fainter lines (a wall of thick strokes hides structure and is slow to raster).
  if (dense) return { bin, neg: w < 0, width: 0.35 + 1.8 * t * t, alpha: 0.08 + 0.5 * t * t };
  return { bin, neg: w < 0, width: 0.4 + 4.2 * t * t, alpha: 0.18 + 0.6 * t };
}

export class GraphCanvas {
  constructor(container, { onHover, onClick } = {}) {
    this.container = container;
    this.base = document.createElement("canvas");
    this.overlay = document.createElement("canvas");
    this.base.className = "graph-base";
    this.overlay.className = "graph-overlay";
    container.append(this.base, this.overlay);
    this.onHover = onHover || (() => {});
    this.onClick = onClick || (() => {});
    this.scene = null;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.hovered = -1;
    this.highlight = { selected: -1, pinned: new Set(), chosen: new Set() };
    this.rendered = { nodes: 0, edges: 0 };
    this.frameTimes = [];
    this._pending = false;
    this._bind();
    this._resizeObserver = new ResizeObserver(() => this.resize());
    this._resizeObserver.observe(container);
  }

  /** Stop observing the page (the view is being replaced). */
  destroy() {
    this._resizeObserver.disconnect();
    window.removeEventListener("mouseup", this._onMouseUp);
    clearTimeout(this._settle);
  }

  /** scene = {nodes, src: Int32Array, dst: Int32Array, w: Float64Array, layout, tokens}. */
  setScene(scene, { keepView = false } = {}) {
    this.scene = scene;
    let maxAbs = 0;
    for (let k = 0; k < scene.w.length; k++) maxAbs = Math.max(maxAbs, Math.abs(scene.w[k]));
    scene.maxAbs = maxAbs;
    scene.dense = scene.w.length > DENSE_EDGES;
    this._buildGrid();
    this.hovered = -1;
    this.resize(false);
    if (!keepView) this.fit();
    return this.draw();
  }

  resize(redraw = true) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, this.container.clientWidth);
    const h = Math.max(1, this.container.clientHeight);
    for (const c of [this.base, this.overlay]) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
      c.style.width = `${w}px`;
      c.style.height = `${h}px`;
    }
    this.dpr = dpr;
    this.cssW = w;
    this.cssH = h;
    // Until the reader zooms or pans, keep the whole graph in view (e.g. when the node panel narrows us).
    if (this.scene && !this.userMoved) this.fit();
    if (redraw && this.scene) this.draw();
  }

  fit() {
    this.userMoved = false;
    const L = this.scene.layout;
    const aw = this.cssW - MARGIN.left - MARGIN.right;
    const ah = this.cssH - MARGIN.top - MARGIN.bottom;
    this.zoom = Math.max(1e-3, Math.min(aw / Math.max(1, L.width), ah / Math.max(1, L.height), 3));
    this.panX = MARGIN.left + (aw - L.width * this.zoom) / 2;
    this.panY = MARGIN.top + (ah - L.height * this.zoom) / 2;
  }

  sx(x) { return x * this.zoom + this.panX; }
  sy(y) { return y * this.zoom + this.panY; }
  radius() { return Math.max(2, Math.min(9, 4 * Math.sqrt(this.zoom))); }

  /** After a zoom or pan: redraw now (small graphs) or move the last picture and redraw once settled. */
  _viewChanged() {
    const s = this.scene;
    if (!s || s.nodes.length + s.w.length <= BITMAP_INTERACTION_ABOVE || !this.drawn) {
      this.requestDraw();
      return;
    }
    const k = this.zoom / this.drawn.zoom;
    const tx = this.panX - this.drawn.panX * k;
    const ty = this.panY - this.drawn.panY * k;
    this.base.style.transformOrigin = "0 0";
    this.base.style.transform = `translate(${tx}px, ${ty}px) scale(${k})`;
    this.drawOverlay();
    clearTimeout(this._settle);
    this._settle = setTimeout(() => this.requestDraw(), SETTLE_MS);
  }

  requestDraw() {
    if (this._pending) return;
    this._pending = true;
    requestAnimationFrame(() => {
      this._pending = false;
      this.draw();
    });
  }

  /** Redraw everything; returns {nodes, edges} drawn and records the frame time. */
  draw() {
    const t0 = performance.now();
    const s = this.scene;
    const ctx = this.base.getContext("2d");
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.cssW, this.cssH);
    this.base.style.transform = "";
    clearTimeout(this._settle);
    if (!s) return this.rendered;
    this.drawn = { zoom: this.zoom, panX: this.panX, panY: this.panY };
    const { x, y } = s.layout;
    this._drawGuides(ctx);

    // Edges: one path per (sign, width bin).
    const buckets = [];
    for (let k = 0; k < 2 * WIDTH_BINS; k++) buckets.push([]);
    const styles = new Array(2 * WIDTH_BINS);
    for (let k = 0; k < s.w.length; k++) {
      const st = edgeStyle(s.w[k], s.maxAbs, s.dense);
      const b = (st.neg ? WIDTH_BINS : 0) + st.bin;
      buckets[b].push(k);
      styles[b] = st;
    }
    let nEdges = 0;
    ctx.lineCap = "round";
    for (let b = 0; b < buckets.length; b++) {
      const list = buckets[b];
      if (!list.length) continue;
      const st = styles[b];
      const [r, g, bl] = st.neg ? COLORS.neg : COLORS.pos;
      ctx.strokeStyle = `rgba(${r},${g},${bl},${st.alpha})`;
      ctx.lineWidth = st.width;
      ctx.beginPath();
      for (const k of list) {
        const a = s.src[k];
        const d = s.dst[k];
        ctx.moveTo(this.sx(x[a]), this.sy(y[a]));
        ctx.lineTo(this.sx(x[d]), this.sy(y[d]));
      }
      ctx.stroke();
      nEdges += list.length;
    }

    // Nodes: one path per kind.
    const r = this.radius();
    const byKind = new Map();
    s.nodes.forEach((n, i) => {
      if (!byKind.has(n.kind)) byKind.set(n.kind, []);
      byKind.get(n.kind).push(i);
    });
    let nNodes = 0;
    ctx.lineWidth = 0.8;
    ctx.strokeStyle = "rgba(255,255,255,0.9)";
    for (const [kind, list] of byKind) {
      ctx.fillStyle = COLORS[kind] || COLORS.feature;
      const rr = kind === "supernode" ? r * 1.9 : r;
      ctx.beginPath();
      for (const i of list) this._shapePath(ctx, shapeOf(kind), this.sx(x[i]), this.sy(y[i]), rr);
      ctx.fill();
      if (rr >= 3) ctx.stroke();
      nNodes += list.length;
    }
    this._drawSupernodeLabels(ctx);
    this.rendered = { nodes: nNodes, edges: nEdges };
    this.drawOverlay();
    const dt = performance.now() - t0;
    this.frameTimes.push(dt);
    if (this.frameTimes.length > 600) this.frameTimes.shift();
    this.lastDrawMs = dt;
    return this.rendered;
  }

  _shapePath(ctx, shape, cx, cy, r) {
    if (shape === "square") {
      ctx.moveTo(cx - r, cy - r);
      ctx.rect(cx - r, cy - r, 2 * r, 2 * r);
    } else if (shape === "diamond") {
      const q = r * 1.35;
      ctx.moveTo(cx, cy - q);
      ctx.lineTo(cx + q, cy);
      ctx.lineTo(cx, cy + q);
      ctx.lineTo(cx - q, cy);
      ctx.closePath();
    } else {
      ctx.moveTo(cx + r, cy);
      ctx.arc(cx, cy, r, 0, 2 * Math.PI);
    }
  }

  _drawGuides(ctx) {
    const L = this.scene.layout;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    // Row bands and labels (layer/site), labels pinned to the left edge.
    L.rows.forEach((row, k) => {
      if (k % 2 === 0) {
        ctx.fillStyle = "rgba(0,0,0,0.025)";
        ctx.fillRect(0, this.sy(row.top), this.cssW, row.height * this.zoom);
      }
      ctx.fillStyle = "#555";
      ctx.textAlign = "right";
      ctx.fillText(row.label, MARGIN.left - 8, this.sy(row.y));
    });
    // Prompt tokens along the bottom, one per column, cut to the column's on-screen width.
    ctx.textAlign = "center";
    ctx.fillStyle = "#222";
    const yTok = Math.min(this.cssH - 14, this.sy(L.height) + 14);
    for (const col of L.cols) {
      const w = col.width * this.zoom;
      if (w < 10) continue;
      let label = col.pos < 0 ? "·" : (this.scene.tokens[col.pos] ?? `p${col.pos}`);
      label = label.replace(/\s/g, "␣");
      while (label.length > 1 && ctx.measureText(label).width > w - 4) label = `${label.slice(0, -2)}…`;
      ctx.fillText(label, this.sx(col.x), yTok);
      ctx.strokeStyle = "rgba(0,0,0,0.06)";
      ctx.beginPath();
      ctx.moveTo(this.sx(col.left), this.sy(0));
      ctx.lineTo(this.sx(col.left), this.sy(L.height));
      ctx.stroke();
    }
  }

  _drawSupernodeLabels(ctx) {
    const s = this.scene;
    ctx.fillStyle = COLORS.supernode;
    ctx.textAlign = "left";
    ctx.font = "bold 11px system-ui, sans-serif";
    s.nodes.forEach((n, i) => {
      if (n.kind === "supernode") ctx.fillText(n.label, this.sx(s.layout.x[i]) + 12, this.sy(s.layout.y[i]) - 10);
    });
  }

  /** Hover ring, the selected node with its edges, pinned and chosen (for grouping) nodes. */
  drawOverlay() {
    const ctx = this.overlay.getContext("2d");
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.cssW, this.cssH);
    const s = this.scene;
    if (!s) return;
    const { x, y } = s.layout;
    const r = this.radius();
    const h = this.highlight;
    if (h.selected >= 0) {
      for (let k = 0; k < s.w.length; k++) {
        if (s.src[k] !== h.selected && s.dst[k] !== h.selected) continue;
        const [cr, cg, cb] = s.w[k] < 0 ? COLORS.neg : COLORS.pos;
        ctx.strokeStyle = `rgba(${cr},${cg},${cb},0.95)`;
        ctx.lineWidth = edgeStyle(s.w[k], s.maxAbs, s.dense).width + 1;
        ctx.beginPath();
        ctx.moveTo(this.sx(x[s.src[k]]), this.sy(y[s.src[k]]));
        ctx.lineTo(this.sx(x[s.dst[k]]), this.sy(y[s.dst[k]]));
        ctx.stroke();
      }
    }
    const ring = (i, color, extra, width = 2) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.arc(this.sx(x[i]), this.sy(y[i]), r + extra, 0, 2 * Math.PI);
      ctx.stroke();
    };
    for (const i of h.pinned) ring(i, "#d35400", 3, 2.5);
    for (const i of h.chosen) ring(i, "#8e44ad", 5, 2);
    if (h.selected >= 0) ring(h.selected, "#111", 2, 2.5);
    if (this.hovered >= 0) ring(this.hovered, "#000", 4, 1.5);
  }

  _buildGrid() {
    const { x, y } = this.scene.layout;
    this.cell = SLOT * 2;
    this.grid = new Map();
    for (let i = 0; i < x.length; i++) {
      const key = `${Math.floor(x[i] / this.cell)},${Math.floor(y[i] / this.cell)}`;
      if (!this.grid.has(key)) this.grid.set(key, []);
      this.grid.get(key).push(i);
    }
  }

  /** Index of the node under screen point (px, py), or -1. */
  nodeAt(px, py) {
    if (!this.scene) return -1;
    const wx = (px - this.panX) / this.zoom;
    const wy = (py - this.panY) / this.zoom;
    const rw = (this.radius() + 4) / this.zoom;
    const { x, y } = this.scene.layout;
    let best = -1;
    let bestD = rw * rw;
    const c0 = Math.floor((wx - rw) / this.cell);
    const c1 = Math.floor((wx + rw) / this.cell);
    const r0 = Math.floor((wy - rw) / this.cell);
    const r1 = Math.floor((wy + rw) / this.cell);
    for (let cx = c0; cx <= c1; cx++) {
      for (let cy = r0; cy <= r1; cy++) {
        for (const i of this.grid.get(`${cx},${cy}`) || []) {
          const d = (x[i] - wx) ** 2 + (y[i] - wy) ** 2;
          if (d <= bestD) {
            bestD = d;
            best = i;
          }
        }
      }
    }
    return best;
  }

  /** Screen position (CSS px, relative to the canvas) of node i: tests click there. */
  screenPosition(i) {
    return { x: this.sx(this.scene.layout.x[i]), y: this.sy(this.scene.layout.y[i]) };
  }

  panBy(dx, dy) {
    this.panX += dx;
    this.panY += dy;
    this.userMoved = true;
    this._viewChanged();
  }

  zoomAt(px, py, factor) {
    const z = Math.max(1e-3, Math.min(40, this.zoom * factor));
    const f = z / this.zoom;
    this.panX = px - (px - this.panX) * f;
    this.panY = py - (py - this.panY) * f;
    this.zoom = z;
    this.userMoved = true;
    this._viewChanged();
  }

  _bind() {
    const el = this.overlay;
    let drag = null;
    const local = (ev) => {
      const b = el.getBoundingClientRect();
      return [ev.clientX - b.left, ev.clientY - b.top];
    };
    el.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [px, py] = local(ev);
      this.zoomAt(px, py, Math.exp(-ev.deltaY * 0.0015));
    }, { passive: false });
    el.addEventListener("mousedown", (ev) => {
      const [px, py] = local(ev);
      drag = { px, py, panX: this.panX, panY: this.panY, moved: false };
    });
    this._onMouseUp = () => {
      setTimeout(() => { drag = null; }, 0);
    };
    window.addEventListener("mouseup", this._onMouseUp);
    el.addEventListener("mousemove", (ev) => {
      const [px, py] = local(ev);
      if (drag && (ev.buttons & 1)) {
        const dx = px - drag.px;
        const dy = py - drag.py;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        if (drag.moved) {
          this.panX = drag.panX + dx;
          this.panY = drag.panY + dy;
          this.userMoved = true;
          this._viewChanged();
          return;
        }
      }
      const i = this.nodeAt(px, py);
      if (i !== this.hovered) {
        this.hovered = i;
        this.drawOverlay();
      }
      this.onHover(i, px, py);
    });
    el.addEventListener("mouseleave", () => {
      this.hovered = -1;
      this.drawOverlay();
      this.onHover(-1, 0, 0);
    });
    el.addEventListener("click", (ev) => {
      if (drag && drag.moved) return;
      const [px, py] = local(ev);
      this.onClick(this.nodeAt(px, py), ev);
    });
    el.addEventListener("dblclick", () => {
      this.fit();
      this.requestDraw();
    });
  }
}
