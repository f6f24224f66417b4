// Hash router of the viewer: #/ (graph list), #/graph/<id>?max_nodes=…, #/job/<id>, #/features,
// #/feature/<fkey>, #/global?fkey=…, #/qk. `window.atlas` exposes the live graph view to tests and benchmarks.

import { featurePage, featureSearch, globalPage, graphList, jobPage, qkPage } from "./corpus.js";
import { DEFAULT_PRUNING, GraphView } from "./graph/view.js";

const main = document.getElementById("main");
window.atlas = { graph: null };

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === (parts[0] || "graphs")));
  window.atlas.graph?.canvas.destroy();
  window.atlas.graph = null;
  switch (parts[0]) {
    case "graph": {
      const pruning = {};
      for (const k of Object.keys(DEFAULT_PRUNING)) if (params.has(k)) pruning[k] = Number(params.get(k));
      const view = new GraphView(main, parts[1], pruning);
      window.atlas.graph = view;
      view.load();
      break;
    }
    case "job":
      if (parts[1]) jobPage(main, parts[1]);
      else jobForm();
      break;
    case "features":
      featureSearch(main, params);
      break;
    case "feature":
      featurePage(main, parts.slice(1).join("/"), params);
      break;
    case "global":
      globalPage(main, params);
      break;
    case "qk":
      qkPage(main, params);
      break;
    default:
      graphList(main, params);
  }
}

function jobForm() {
  main.innerHTML = `<section class="page"><h2>Job progress</h2>
    <p>A job id is returned by <code>POST /corpora</code> (its <code>job_url</code>).</p>
    <form class="inline" id="job-go"><label>job id <input name="job" size="36"></label><button>Show</button></form></section>`;
  main.querySelector("#job-go").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = new FormData(e.target).get("job").trim();
    if (id) location.hash = `#/job/${encodeURIComponent(id)}`;
  });
}

// Hash changes made by the graph view itself (pruning in the URL) use replaceState, which fires no event.
window.addEventListener("hashchange", route);
route();
