"""`atlas case-study gemma3-270m`: the case studies of issue #16 through the product, end to end.

Prompts of four tasks (``workers/case_studies``: IOI, induction, brackets, factual recall), tokenised with
Gemma's tokenizer, are submitted as corpora over REST to an API and a real worker this command starts (the
demo's :func:`service.demo.api_session`), the worker stores every graph whole (``prune: false``, node budget
``max_feature_nodes``), and the questions are answered from what was stored, through the API:

- ``POST /analyses {kind: attribution_shares}`` (``workers/analysis/attribution_shares.py``): per graph, the share
  of the target carried by each token position and by each feature, from the stored edges; summed per feature
  over the corpus;
- ``POST /cypher``: each graph's prompt index and metrics (replacement and completeness scores);
- ``GET /global/neighbours``: the corpus aggregates upstream of the features that carry the most.

IOI runs twice: with the dictionary set spliced in and with an empty one (``error_only_set``: every MLP is an
error node and attention is frozen, the error-only graph), for the IO-position check. The prompts' roles
(IO, S1, S2, END; the answer's earlier occurrence; the opening bracket...) come from the generators, which know
where they put them. Numbers go to ``<out>/case-study.json``, plots (matplotlib, from the data read back) next
to it.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.demo import (
    DemoContext,
    DemoError,
    api_session,
    post_json,
    register,
    step_migrate,
    step_services,
    submit_and_wait,
)
from workers.dictionaries.gemma.full import GemmaDictionarySpec, ensure_gemma_dictionaries
from workers.settings import Settings

TASKS = ("ioi", "induction", "brackets", "facts")
MODEL_ID = "gemma3-270m"
# Every graph stored whole (rows complete: the shares are exact), the computation bounded by the node budget.
CASE_SETTINGS: dict[str, Any] = {"prune": False, "max_feature_nodes": 64}
VIEWER = "http://localhost:8000"


@dataclass
class CaseStudyConfig:
    sizes: dict[str, int] = field(default_factory=lambda: {"ioi": 200, "induction": 60, "brackets": 60, "facts": 60})
    # A dictionary set directory for Gemma 3 270M, or the spec of a full set to build (or reuse) and use;
    # None: the trained slice.
    dictionaries: Path | GemmaDictionarySpec | None = None
    out: Path | None = None  # where the JSON and plots go; None: not written
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=lambda: dict(CASE_SETTINGS))
    error_only_ioi: bool = True  # also run the IOI corpus with no dictionaries
    viewer: str = VIEWER  # base URL of the viewer the write-up's feature links point at
    model_id: str = MODEL_ID  # the registry id of the model (its sets: <id>-case-dicts, <id>-error-only)
    job_timeout_s: float = 6 * 3600


def error_only_set(settings: Settings) -> Path:
    """An empty dictionary set (native format, no dictionary): registered for a model, its graphs are error-only."""
    from workers.dictionaries.formats import save_dictionary_set
    from workers.dictionaries.modules import DictionarySet

    path = settings.zoo_dir / "error-only"
    if not (path / "dictionaries.json").is_file():
        save_dictionary_set(DictionarySet({}), path)
    return path


def task_prompts(tokenizer: Any, sizes: dict[str, int], seed: int = 0) -> dict[str, list]:
    """The TaskPrompts of each task with a size > 0."""
    from workers.case_studies import brackets, facts, induction, ioi

    makers: dict[str, Callable[[int], list]] = {
        "ioi": lambda n: [ioi.task_prompt(p, tokenizer) for p in
                          ioi.ioi_prompts(n, ioi.single_token_names(tokenizer), seed=seed)],
        "induction": lambda n: induction.induction_prompts(n, tokenizer, seed=seed),
        "brackets": lambda n: brackets.bracket_prompts(n, tokenizer, seed=seed),
        "facts": lambda n: facts.fact_prompts(n, tokenizer, seed=seed),
    }
    return {t: makers[t](n) for t, n in sizes.items() if n > 0}


def wait_analysis(http: Any, body: dict, timeout_s: float = 1800) -> dict:
    a = post_json(http, "/analyses", body, 202)
    deadline = time.monotonic() + timeout_s
    while a["status"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise DemoError(f"analysis {a['analysis_id']} did not finish in {timeout_s:.0f}s")
        time.sleep(1.0)
        a = http.get(f"/analyses/{a['analysis_id']}").json()
    if a["status"] != "done":
        raise DemoError(f"analysis {a['analysis_id']} ({body['kind']}) failed: {a['error']}")
    return a["result"]


def cypher(http: Any, query: str, **parameters: Any) -> list[dict]:
    r = post_json(http, "/cypher", {"query": query, "parameters": parameters, "max_rows": 1000}, 200)
    if r.get("truncated_by"):
        raise DemoError(f"/cypher cut the answer ({r['truncated_by']}): {query}")
    return [dict(zip(r["columns"], row, strict=True)) for row in r["rows"]]


_GRAPHS_OF_CORPUS = """
MATCH (p:Prompt {corpus_id: $c})
MATCH (g:Graph {prompt_id: p.prompt_id}) WHERE g.status = 'complete'
RETURN p.index AS index, g.graph_id AS graph_id, g.metrics AS metrics, g.target AS target ORDER BY index
"""


def read_corpus(http: Any, corpus_id: str, top_features: int = 30) -> dict:
    """What the case study reads back of one corpus: each graph's prompt index, metrics and targets (Cypher), and
    the attribution shares of its first target (the analysis)."""
    rows = cypher(http, _GRAPHS_OF_CORPUS, c=corpus_id)
    shares = wait_analysis(http, {"kind": "attribution_shares",
                                  "params": {"corpus_id": corpus_id, "target": 0, "top_features": 10,
                                             "corpus_features": top_features}})
    by_graph = {g["graph_id"]: g for g in shares["graphs"]}
    graphs = []
    for r in rows:
        t = json.loads(r["target"])["targets"][0]
        graphs.append({"index": r["index"], "graph_id": r["graph_id"], "metrics": json.loads(r["metrics"] or "{}"),
                       "target": t, "shares": by_graph[r["graph_id"]]})
    return {"corpus_id": corpus_id, "graphs": graphs, "features": shares["features"]}


def feature_url(viewer: str, fkey: str) -> str:
    """The viewer's feature page (``service/ui/static/app.js``: ``#/feature/<fkey>``)."""
    return f"{viewer.rstrip('/')}/ui/#/feature/{urllib.parse.quote(fkey, safe='')}"


def summarise(task: str, prompts: Sequence[Any], corpus: dict, viewer: str) -> dict:
    """Per-role shares, the best position's role, accuracy and scores of one corpus, from what was read back."""
    role_share: dict[str, list[float]] = defaultdict(list)
    best_roles: Counter[str] = Counter()
    correct, probs, repl, compl, unexp = [], [], [], [], []
    per_prompt = []
    for g in corpus["graphs"]:
        p = prompts[g["index"]]
        s = g["shares"]
        value = s["target"]["value"]
        shares = {pos: v for pos, v in s["positions"]}
        by_role: dict[str, float] = defaultdict(float)
        for pos, v in shares.items():
            by_role[p.role_of(pos)] += v
        for role in [*p.roles, "other"]:
            role_share[role].append(by_role.get(role, 0.0) / value if value else 0.0)
        best_role = p.role_of(s["best"]) if s["best"] >= 0 else "none"
        best_roles[best_role] += 1
        if p.distractor_id is not None:
            correct.append(value > 0)
        else:
            probs.append(g["target"].get("token_prob"))
        m = g["metrics"]
        repl.append(m.get("replacement_unpruned"))
        compl.append(m.get("completeness_unpruned"))
        unexp.append(m.get("unexpanded_unpruned"))
        per_prompt.append({"index": g["index"], "graph_id": g["graph_id"], "text": p.text, "value": value,
                           "best": s["best"], "best_role": best_role, "role_shares": dict(by_role),
                           "by_kind": s["by_kind"], "feature_total": s["feature_total"],
                           "n_features": s["n_features"], "complete": s["complete"],
                           "top_feature": s["features"][0]["fkey"] if s["features"] else None})
    n = len(corpus["graphs"])

    def stats(xs: list) -> dict | None:
        xs = [x for x in xs if x is not None]
        return None if not xs else {"mean": statistics.fmean(xs), "median": statistics.median(xs), "min": min(xs),
                                    "max": max(xs), "n": len(xs)}

    out = {
        "task": task, "corpus_id": corpus["corpus_id"], "n_prompts": len(prompts), "n_graphs": n,
        "best_role_fraction": {r: c / n for r, c in best_roles.most_common()},
        "mean_role_share": {r: statistics.fmean(v) for r, v in role_share.items()},
        "scores": {"replacement": stats(repl), "completeness": stats(compl), "unexpanded": stats(unexp)},
        "features": [{**f, "url": feature_url(viewer, f["fkey"])} for f in corpus["features"]],
        "prompts": per_prompt,
    }
    if correct:
        out["accuracy"] = {"rule": "target value logit(right) - logit(wrong) > 0", "fraction": sum(correct) / n}
    if probs:
        ps = [p for p in probs if p is not None]
        out["accuracy"] = {"rule": "probability of the answer (p > 0.5 implies it is the top token)",
                           "mean_prob": statistics.fmean(ps), "median_prob": statistics.median(ps),
                           "fraction_p_over_half": sum(p > 0.5 for p in ps) / len(ps)}
    if task == "ioi":
        hits = [g["shares"]["best"] in prompts[g["index"]].roles["IO"] for g in corpus["graphs"]]
        right = [g["shares"]["target"]["value"] > 0 for g in corpus["graphs"]]
        out["io_position_check"] = {
            "fraction": sum(hits) / n, "n": n,
            "fraction_when_model_correct": (sum(h for h, c in zip(hits, right, strict=True) if c) / sum(right))
            if any(right) else None}
    return out


def run_case_study(settings: Settings, echo: Callable[[str], None], config: CaseStudyConfig) -> dict:
    """Services up, schema migrated, then :func:`case_study`; returns (and writes, with ``config.out``) the
    results with the total time."""
    started = time.monotonic()
    ctx = DemoContext(settings=settings, echo=echo)
    echo(f"services: {step_services(ctx)}")
    echo(f"migrate: {step_migrate(ctx)}")
    results = case_study(settings, echo, config)
    results["seconds_total"] = time.monotonic() - started
    if config.out is not None:
        write_outputs(results, Path(config.out))
    return results


def resolve_dictionaries(dictionaries: Path | GemmaDictionarySpec | None, settings: Settings,
                         echo: Callable[[str], None]) -> Path:
    """The directory of the case study's dictionary set: ``dictionaries`` itself, the full set of a spec (built
    first if its key has none: hours on a CPU, README of workers/dictionaries), or the trained slice."""
    if isinstance(dictionaries, GemmaDictionarySpec):
        spec = dictionaries
        echo(f"dictionaries: the full set ({len(spec.site_list())} sites, {spec.d_dict:,} features, "
             f"{spec.tokens:,} training tokens; built on first use, resumable)")
        path = ensure_gemma_dictionaries(spec, settings=settings, progress=True)
        failures = json.loads((path / "report.json").read_text())["quality_failures"]
        echo("dictionaries: " + ("quality bar met" if not failures else "quality bar missed: " + "; ".join(failures)))
        return path
    if dictionaries is None:
        from workers.dictionaries.gemma.slice import GemmaSliceSpec, ensure_gemma_slice

        spec = GemmaSliceSpec()
        echo(f"dictionaries: the trained slice (layers {', '.join(map(str, spec.layers))}, {spec.d_dict} features; "
             "trained on first use)")
        return ensure_gemma_slice(spec, settings=settings, progress=True)
    return Path(dictionaries).expanduser().resolve()


def case_study(settings: Settings, echo: Callable[[str], None], config: CaseStudyConfig, tokenizer: Any = None) -> dict:
    """The core of :func:`run_case_study` on running services: dictionaries, prompts, an API and a worker of its
    own, every corpus over REST and read back. Returns the results (not written). ``tokenizer``: Gemma's, if the
    caller has it loaded (else it is built from the GGUF vocabulary, ~17 s)."""
    from workers.models.gguf import gemma3_270m_path, load_gemma3_270m_tokenizer

    started = time.monotonic()
    dictionaries = resolve_dictionaries(config.dictionaries, settings, echo)
    empty = error_only_set(settings)
    model_path = gemma3_270m_path()
    tokenizer = tokenizer if tokenizer is not None else load_gemma3_270m_tokenizer()
    prompts = task_prompts(tokenizer, config.sizes, config.seed)
    echo("prompts: " + ", ".join(f"{t} {len(p)}" for t, p in prompts.items()))
    model_id = config.model_id
    dset_id, empty_id = f"{model_id}-case-dicts", f"{model_id}-error-only"
    runs = [(task, dset_id, task) for task in prompts]
    if config.error_only_ioi and "ioi" in prompts:
        runs.append(("ioi-error-only", empty_id, "ioi"))
    results: dict[str, Any] = {"model": model_id, "dictionaries": str(dictionaries), "settings": config.settings,
                               "seed": config.seed, "sizes": {t: len(p) for t, p in prompts.items()}, "tasks": {}}
    with api_session(settings, [model_path]) as http:
        register(http, model_id, model_path, {dset_id: dictionaries, empty_id: empty})
        registry = http.get("/registry").json()
        results["dictionary_set"] = next(d for d in registry["dictionary_sets"] if d["dictionary_set_id"] == dset_id)
        for name, dset, task in runs:
            t0 = time.monotonic()
            echo(f"{name}: {len(prompts[task])} prompts over REST (dictionary set {dset})")
            from workers.case_studies.tasks import corpus_items

            accepted, job = submit_and_wait(http, echo, {
                "model": model_id, "dictionary_set": dset, "name": f"case-study {name}",
                "prompts": corpus_items(prompts[task]), "settings": config.settings}, config.job_timeout_s)
            corpus = read_corpus(http, accepted["corpus_id"])
            summary = summarise(task, prompts[task], corpus, config.viewer)
            summary["dictionary_set"] = dset
            summary["seconds"] = time.monotonic() - t0
            summary["throughput_per_min"] = job["throughput_per_min"]
            for f in summary["features"][:3]:
                page = http.get("/global/neighbours", params={"fkey": f["fkey"], "corpus_id": accepted["corpus_id"],
                                                              "direction": "upstream", "limit": 5})
                f["upstream_aggregates"] = page.json()["items"] if page.status_code == 200 else []
            results["tasks"][name] = summary
            echo(f"{name}: done in {summary['seconds']:.0f}s; best position by role {summary['best_role_fraction']}")
    results["seconds_corpora"] = time.monotonic() - started
    return results


def _rounded(x: Any, digits: int = 5) -> Any:
    """Floats to ``digits`` significant digits (the JSON stays small), recursively."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):  # times since the epoch (``*_at``) keep every digit
        return {k: v if k.endswith("_at") else _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return x


def write_outputs(results: dict, out: Path) -> list[Path]:
    """``case-study.json`` and the plots, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "case-study.json").write_text(json.dumps(_rounded(results), indent=1, sort_keys=True) + "\n")
    from service.case_study_plots import plot_all

    return [out / "case-study.json", *plot_all(results, out)]
