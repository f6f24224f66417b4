// What is drawn: the circuit's nodes and edges after grouping into supernodes. A supernode replaces its
// members by one node at their centroid; edges touching members are re-attached to it and parallel edges
// summed (their signed direct effects add, as effects through a group of sources do), edges inside a
// group are dropped. Pure data in, typed arrays out.

import { computeLayout, promptTokens } from "./layout.js";

/** Base layout of a circuit's own nodes (cached on the circuit object; grouping never moves them). */
export function baseLayout(circuit) {
  if (!circuit._layout) {
    circuit._tokens = promptTokens(circuit);
    circuit._layout = computeLayout(circuit.nodes, circuit._tokens);
  }
  return circuit._layout;
}

/**
 * supernodes: [{name, members: [node_id...]}]. Returns {nodes, src, dst, w, layout, tokens, memberOf}
 * where nodes are display nodes (originals, or {kind: "supernode", label, members}) and edge arrays index them.
 */
export function buildScene(circuit, supernodes = []) {
  const L = baseLayout(circuit);
  const memberOf = new Map();
  for (const sn of supernodes) for (const id of sn.members) if (L.index.has(id)) memberOf.set(id, sn.name);
  const nodes = [];
  const xs = [];
  const ys = [];
  const displayIndex = new Map(); // node_id or "super:NAME" -> display index
  circuit.nodes.forEach((n, i) => {
    if (memberOf.has(n.node_id)) return;
    displayIndex.set(n.node_id, nodes.length);
    nodes.push(n);
    xs.push(L.x[i]);
    ys.push(L.y[i]);
  });
  for (const sn of supernodes) {
    const present = sn.members.filter((id) => L.index.has(id));
    if (!present.length) continue;
    let sx = 0;
    let sy = 0;
    let act = 0;
    let infl = 0;
    for (const id of present) {
      const i = L.index.get(id);
      sx += L.x[i];
      sy += L.y[i];
      act += circuit.nodes[i].activation ?? 0;
      infl += circuit.nodes[i].influence ?? 0;
    }
    displayIndex.set(`super:${sn.name}`, nodes.length);
    nodes.push({ node_id: `super:${sn.name}`, kind: "supernode", label: sn.name, members: present,
      activation: act, influence: infl });
    xs.push(sx / present.length);
    ys.push(sy / present.length);
  }
  const endpoint = (id) => displayIndex.get(memberOf.has(id) ? `super:${memberOf.get(id)}` : id);
  const summed = new Map();
  for (const e of circuit.edges) {
    const a = endpoint(e.source);
    const d = endpoint(e.target);
    if (a === undefined || d === undefined || a === d) continue;
    const key = a * 1e7 + d;
    summed.set(key, (summed.get(key) ?? 0) + e.weight);
  }
  const m = summed.size;
  const src = new Int32Array(m);
  const dst = new Int32Array(m);
  const w = new Float64Array(m);
  let k = 0;
  for (const [key, weight] of summed) {
    src[k] = Math.floor(key / 1e7);
    dst[k] = key % 1e7;
    w[k] = weight;
    k++;
  }
  const layout = { ...L, x: Float64Array.from(xs), y: Float64Array.from(ys), index: displayIndex };
  return { nodes, src, dst, w, layout, tokens: circuit._tokens, memberOf };
}

/** Incoming and outgoing edges of display node i, strongest |w| first. */
export function neighbours(scene, i, limit = 12) {
  const inputs = [];
  const outputs = [];
  for (let k = 0; k < scene.w.length; k++) {
    if (scene.dst[k] === i) inputs.push({ node: scene.nodes[scene.src[k]], w: scene.w[k] });
    if (scene.src[k] === i) outputs.push({ node: scene.nodes[scene.dst[k]], w: scene.w[k] });
  }
  const byAbs = (a, b) => Math.abs(b.w) - Math.abs(a.w);
  return { inputs: inputs.sort(byAbs).slice(0, limit), outputs: outputs.sort(byAbs).slice(0, limit),
    nIn: inputs.length, nOut: outputs.length };
}
