// Small SVG plots the pages draw from API numbers (no library): a bar chart, and the shading of a token by a
// feature's activation. Every mark carries its number in a data- attribute, so tests read what was drawn.

import { esc } from "./format.js";

const short = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(1) : (+v).toPrecision(3));

/** Bars over [edges[i], edges[i+1]) with heights `counts` (a histogram); the x axis shows the edges' range. */
export function histogramSVG(counts, edges, { width = 520, height = 150, cls = "histogram", xLabel = "", yLabel = "count" } = {}) {
  const pad = { left: 44, right: 10, top: 8, bottom: 34 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const top = Math.max(1, ...counts);
  const bw = counts.length ? w / counts.length : w;
  const bars = counts.map((c, i) => {
    const bh = (h * c) / top;
    return `<rect class="bar" data-count="${c}" data-lo="${edges[i]}" data-hi="${edges[i + 1]}" x="${(pad.left + i * bw + 0.5).toFixed(1)}"
      y="${(pad.top + h - bh).toFixed(1)}" width="${Math.max(0.5, bw - 1).toFixed(1)}" height="${bh.toFixed(2)}" fill="#4a6fd1"><title>[${short(edges[i])}, ${short(edges[i + 1])}): ${c}</title></rect>`;
  }).join("");
  const lo = edges.length ? short(edges[0]) : "";
  const hi = edges.length ? short(edges[edges.length - 1]) : "";
  return `<svg class="${cls}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">
    <line x1="${pad.left}" y1="${pad.top + h}" x2="${pad.left + w}" y2="${pad.top + h}" stroke="#888"/>
    <line x1="${pad.left}" y1="${pad.top}" x2="${pad.left}" y2="${pad.top + h}" stroke="#888"/>
    <text x="${pad.left - 4}" y="${pad.top + 8}" font-size="10" text-anchor="end">${top}</text>
    <text x="${pad.left - 4}" y="${pad.top + h}" font-size="10" text-anchor="end">0</text>
    <text x="${pad.left}" y="${pad.top + h + 13}" font-size="10">${esc(lo)}</text>
    <text x="${pad.left + w}" y="${pad.top + h + 13}" font-size="10" text-anchor="end">${esc(hi)}</text>
    <text x="${pad.left + w / 2}" y="${height - 4}" font-size="11" text-anchor="middle">${esc(xLabel)}</text>
    <text x="10" y="${pad.top + h / 2}" font-size="11" text-anchor="middle" transform="rotate(-90 10 ${pad.top + h / 2})">${esc(yLabel)}</text>
    ${bars}</svg>`;
}

/** Prompts finished per minute over a job's run (GET /jobs/{id}/timeline): one bar per interval, its failed
 *  share red on top of the done share. */
export function timelineSVG(tl, { width = 620, height = 160 } = {}) {
  const pad = { left: 44, right: 10, top: 8, bottom: 34 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const bins = tl.bins;
  const top = Math.max(1e-9, ...bins.map((b) => b.per_min));
  const bw = bins.length ? w / bins.length : w;
  const bars = bins.map((b, i) => {
    const total = b.done + b.failed;
    const bh = (h * b.per_min) / top;
    const fh = total ? (bh * b.failed) / total : 0;
    const x = (pad.left + i * bw + 0.5).toFixed(1);
    const bwid = Math.max(0.5, bw - 1).toFixed(1);
    return `<g class="tbin" data-done="${b.done}" data-failed="${b.failed}" data-per-min="${b.per_min}"><title>${short(b.per_min)} prompts/min: ${b.done} done, ${b.failed} failed</title>
      <rect class="done" x="${x}" y="${(pad.top + h - bh).toFixed(1)}" width="${bwid}" height="${(bh - fh).toFixed(2)}" fill="#4a6fd1"/>
      <rect class="failed" x="${x}" y="${(pad.top + h - bh).toFixed(1)}" width="${bwid}" height="${fh.toFixed(2)}" fill="#c53030"/></g>`;
  }).join("");
  const secs = tl.end != null && tl.start != null ? tl.end - tl.start : 0;
  return `<svg class="timeline" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">
    <line x1="${pad.left}" y1="${pad.top + h}" x2="${pad.left + w}" y2="${pad.top + h}" stroke="#888"/>
    <line x1="${pad.left}" y1="${pad.top}" x2="${pad.left}" y2="${pad.top + h}" stroke="#888"/>
    <text x="${pad.left - 4}" y="${pad.top + 8}" font-size="10" text-anchor="end">${short(top)}</text>
    <text x="${pad.left - 4}" y="${pad.top + h}" font-size="10" text-anchor="end">0</text>
    <text x="${pad.left}" y="${pad.top + h + 13}" font-size="10">0 s</text>
    <text x="${pad.left + w}" y="${pad.top + h + 13}" font-size="10" text-anchor="end">${short(secs)} s</text>
    <text x="${pad.left + w / 2}" y="${height - 4}" font-size="11" text-anchor="middle">time since the job started (red: failed)</text>
    <text x="10" y="${pad.top + h / 2}" font-size="11" text-anchor="middle" transform="rotate(-90 10 ${pad.top + h / 2})">prompts/min</text>
    ${bars}</svg>`;
}

/** Background opacity of a token whose activation is `a`, on a scale whose top is `max` (0 when inactive). */
export function shade(a, max) {
  return a == null || !(max > 0) ? 0 : Math.max(0, Math.min(1, a / max));
}
