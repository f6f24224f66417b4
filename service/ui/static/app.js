// Hash router of the viewer: #/ (graph list), #/graph/<id>?max_nodes=…, #/corpora, #/job (list), #/job/<id>,
// #/features?q=…, #/feature/<fkey>, #/global?fkey=…, #/qk?graph_id=…&layer=…. `window.atlas` exposes the live graph view to tests and benchmarks.

import { DEFAULT_PRUNING, GraphView } from "./graph/view.js";
import { corpusList } from "./pages/corpora.js";
import { featurePage } from "./pages/feature.js";
import { featureSearch } from "./pages/features.js";
import { globalPage } from "./pages/global.js";
import { graphList } from "./pages/graphs.js";
import { jobPage } from "./pages/job.js";
import { jobList } from "./pages/jobs.js";
import { qkPage } from "./pages/qk.js";

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
    case "corpora":
      corpusList(main, params);
      break;
    case "job":
      if (parts[1]) jobPage(main, parts[1]);
      else jobList(main, params);
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

// Hash changes made by the graph view itself (pruning in the URL) use replaceState, which fires no event.
window.addEventListener("hashchange", route);
route();
