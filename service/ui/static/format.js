// Text for HTML: the viewer's one escaper and one number formatter (every page, panel and export uses these).

/** `s` as HTML text (null and undefined: empty). */
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

/** A number for a table or tooltip: "–" when missing, integers as they are, 4 significant digits, exponent
 * notation beyond 1e4 or below 1e-3. Anything else is shown as (escaped) text. */
export function num(v) {
  if (v == null) return "–";
  if (typeof v !== "number") return esc(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(2) : v.toPrecision(4);
}
