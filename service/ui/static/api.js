// The REST API as the viewer sees it: JSON fetches with errors that say what failed, and which optional
// endpoints this server has (read once from /openapi.json, so a missing route shows "not available"
// instead of a broken page or invented data).

export class ApiError extends Error {
  constructor(status, url, detail) {
    super(`${status} from ${url}: ${detail}`);
    this.status = status;
    this.url = url;
    this.detail = detail;
  }
}

function detailText(body) {
  if (body == null) return "";
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(body).slice(0, 300);
}

/** GET (or another method) a JSON resource; throws ApiError naming the URL and the server's reason. */
export async function getJSON(url, options = {}) {
  let res;
  try {
    res = await fetch(url, { headers: { Accept: "application/json" }, ...options });
  } catch (err) {
    throw new ApiError(0, url, `the API did not answer (${err.message}); is the service running?`);
  }
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { detail: text.slice(0, 300) };
  }
  if (!res.ok) throw new ApiError(res.status, url, detailText(body) || res.statusText);
  return body;
}

/** URL with query parameters; arrays become repeated keys, null/undefined/"" are left out. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, String(x)));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** The API key a reader typed (write routes), kept in this tab's sessionStorage only. */
export const KEY_STORE = "atlas.apiKey";

/** POST / PUT / DELETE a JSON body with the tab's API key (or `key`); throws ApiError like getJSON. */
export function sendJSON(url, method, body, key = sessionStorage.getItem(KEY_STORE) || "") {
  return getJSON(url, {
    method, body: body === undefined ? undefined : JSON.stringify(body),
    headers: { Accept: "application/json", "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
  });
}

/** Poll GET /analyses/{id} until done or failed; `onStatus(analysis)` sees each state; returns the last. */
export async function pollAnalysis(analysis, onStatus = () => {}, everyMs = 700) {
  let a = analysis;
  while (a.status === "queued" || a.status === "running") {
    if (onStatus(a) === false) return a;
    await new Promise((r) => setTimeout(r, everyMs));
    a = await getJSON(`/analyses/${encodeURIComponent(a.analysis_id)}`);
  }
  return a;
}

export function featureUrl(fkey) {
  // fkeys look like "dset/L1.mlp#17": '#' must be escaped, '/' is fine (the route takes a path).
  return `/features/${encodeURIComponent(fkey)}`;
}

let openapiPromise = null;

/** The server's OpenAPI paths (cached). */
export function apiPaths() {
  if (!openapiPromise) {
    openapiPromise = getJSON("/openapi.json").then((doc) => doc.paths || {}).catch(() => ({}));
  }
  return openapiPromise;
}

/** The first GET path matching `test(path)`, with its operation, or null when the server has none. */
export async function findGetEndpoint(test) {
  const paths = await apiPaths();
  for (const [path, ops] of Object.entries(paths)) {
    if (ops.get && test(path)) return { path, op: ops.get };
  }
  return null;
}
