"""The work of one prompt, as the Celery task runs it: start -> load (cached per process) -> attribute ->
prune -> write -> finish, checking the job's cancellation flag at every stage boundary (and between write
batches), with a heartbeat thread refreshing the prompt's liveness in Redis meanwhile.

Crashes and duplicates (docs/reliability.md):
- A delivery that finds another delivery of the prompt alive (a fresh heartbeat with another runner token)
  changes nothing and raises ``PromptBusy``: the task retries once that heartbeat would be stale, and then
  finds the prompt final (the other delivery finished it) or takes over (the other one died). A duplicate
  therefore never changes the outcome, and no delivery drops a prompt that might be orphaned.
- A delivery that finds the prompt's graph leased by another writer (a dead writer's lease not yet run out)
  raises ``GraphBusy`` with the lease's remaining time; the task retries then, and a retry does not count
  as an attempt (``start_prompt(count_attempt=False)``): waiting out a crash is not the prompt's fault.
- A prompt that ends without its graph (failed, cancelled) first removes what an unfinished write of it left
  (:func:`end_prompt`); the reaper removes what it could not (a dead writer's lease still live then).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_lib
from neo4j import Driver

from workers.models.placement import Placement
from workers.pipeline import jobs, registry
from workers.pipeline.config import PipelineSettings
from workers.pipeline.snapshots import snapshot
from workers.store.writer import GraphBusy, discard_unfinished, lease_left_s, write_graph
from workers.vocabulary.defaults import EDGE_THRESHOLD, NODE_THRESHOLD

log = logging.getLogger(__name__)


class PromptCancelled(Exception):
    """The job was cancelled; the prompt stopped at a stage boundary."""


class PromptBusy(Exception):
    """Another delivery of this prompt is alive (fresh heartbeat); retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:  # Celery rebuilds it from message
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentFailure(Exception):
    """The prompt cannot succeed by retrying (bad target, changed files, ...): recorded as failed."""


@dataclass
class Loaded:
    lin: Any  # workers.engine.linearise.Linearised
    tokenizer: Any
    model: registry.RegisteredModel
    dset: registry.RegisteredDictionarySet
    fingerprints: tuple


class ModelCache:
    """Models + dictionary sets loaded once per worker process and kept (LRU of ``size`` entries).

    Before every use the files' cheap fingerprint is compared with the one taken when they were hashed;
    if it changed they are re-hashed, and a hash that differs from the registered one is refused.

    With ``snapshots`` (a directory; the workers' cache: ``ATLAS_PIPELINE_LAZY_DICTIONARIES``), dictionary sets
    placed on the CPU in fp32 are loaded lazily: their matrices are memory-mapped, from a read-only copy of the
    registered files made once per content hash (``snapshots.py``: never the registered files themselves), so a
    worker holds only the rows it gathers. Otherwise, and for any other placement (which copies the matrices
    anyway), they are read whole.
    """

    def __init__(self, size: int = 2, placement: Placement | None = None, snapshots: Path | None = None) -> None:
        self.size = size
        self.snapshots = snapshots
        # where models and dictionaries are loaded (the gpu queue's workers: ATLAS_DEVICE / ATLAS_DTYPE);
        # default the CPU in fp32 (the API's and analyses' caches)
        self.placement = placement or Placement()
        self._items: OrderedDict[tuple[str, str, str, str], Loaded] = OrderedDict()
        self.loads = 0

    def get(self, model: registry.RegisteredModel, dset: registry.RegisteredDictionarySet) -> Loaded:
        key = (model.model_id, model.content_hash, dset.dictionary_set_id, dset.content_hash)
        hit = self._items.get(key)
        fps = (registry.fingerprint(model.path), registry.fingerprint(dset.path))
        if hit is not None and hit.fingerprints == fps:
            self._items.move_to_end(key)
            return hit
        registry.verify_unchanged("model", model.model_id, model.path, model.content_hash)
        registry.verify_unchanged("dictionary set", dset.dictionary_set_id, dset.path, dset.content_hash)
        if hit is not None:  # touched but identical content
            hit.fingerprints = fps
            return hit
        loaded = self._load(model, dset, fps)
        self._items[key] = loaded
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return loaded

    def _load(self, model: registry.RegisteredModel, dset: registry.RegisteredDictionarySet, fps: tuple) -> Loaded:
        import torch
        from transformers import AutoModelForCausalLM

        from workers.dictionaries.formats import load_dictionary_set
        from workers.engine.linearise import Linearised

        t0 = time.perf_counter()
        if model.format == "gguf":
            from workers.models.gguf import load_gguf_model

            hf, tok = load_gguf_model(Path(model.path))
        else:
            hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32, local_files_only=True,
                                                      use_safetensors=True).eval()  # never unpickle weights
            tok = load_tokenizer(model)
        lazy = self.snapshots is not None and self.placement == Placement()
        ds = load_dictionary_set(snapshot(dset.path, dset.content_hash, self.snapshots) if lazy else Path(dset.path),
                                 hf, lazy=lazy)
        lin = Linearised(hf, ds).place(self.placement)
        self.loads += 1
        log.info("loaded %s + %s on %s (%s%s) in %.1fs", model.model_id, dset.dictionary_set_id,
                 self.placement.device, self.placement.dtype, ", dictionaries mapped" if lazy else "",
                 time.perf_counter() - t0)
        return Loaded(lin, tok, model, dset, fps)


def load_tokenizer(model: registry.RegisteredModel):
    """The model's tokenizer (HF directory or GGUF file), or None when the directory has none."""
    from transformers import AutoTokenizer

    if model.format == "gguf":
        from pathlib import Path

        p = Path(model.path)
        return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name, local_files_only=True)
    try:
        return AutoTokenizer.from_pretrained(model.path, local_files_only=True)
    except (OSError, ValueError):
        return None


class Heartbeat:
    """Refreshes ``heartbeat_key(job)[prompt]`` (time and ``runner`` token) every ``period_s`` while the prompt
    runs."""

    def __init__(self, r: redis_lib.Redis, job_id: str, prompt_id: str, period_s: float, runner: str) -> None:
        self.r, self.job_id, self.field, self.period, self.runner = r, job_id, prompt_id, period_s, runner
        self.key = jobs.heartbeat_key(job_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{prompt_id}")

    def beat(self) -> None:
        jobs.beat(self.r, self.job_id, self.field, self.runner)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.beat()
            except redis_lib.RedisError as exc:  # Redis restarting: the next beat will do
                log.warning("heartbeat for %s failed: %s", self.field, exc)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The last beat stays until the prompt's outcome is recorded (end_prompt clears it): removed here, the
        # reaper could find the prompt still 'running' with no beat in between, and take it for dead.
        self._stop.set()
        self._thread.join(timeout=5)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def compute_graph(loaded: Loaded, work: jobs.PromptWork, check: Callable[[str], None]):
    """(engine Graph, PruneResult or None) for one prompt; ``check(stage)`` between stages."""
    from workers.engine.attribution import AttributionSettings, attribute
    from workers.engine.pruning import prune

    st = work.settings
    budget = st.get("max_feature_nodes")
    settings = AttributionSettings(batch_size=int(st.get("batch_size", 32)),
                                   max_feature_nodes=None if budget is None else int(budget))
    check("attribute")
    try:
        g = attribute(loaded.lin, work.tokens, work.targets or None, tokenizer=loaded.tokenizer, settings=settings)
    except (ValueError, KeyError) as exc:  # bad target for this prompt: retrying cannot help
        raise PermanentFailure(f"attribution rejected the prompt: {exc}") from exc
    g.prompt = work.text
    if loaded.tokenizer is not None and not g.token_strings:
        g.token_strings = [loaded.tokenizer.decode([t]) for t in work.tokens]
    check("prune")
    pr = prune(g, float(st.get("node_threshold", NODE_THRESHOLD)), float(st.get("edge_threshold", EDGE_THRESHOLD))) if st.get("prune", True) else None
    return g, pr


def end_prompt(driver: Driver, r: redis_lib.Redis | None, prompt_id: str, outcome: str, error: str | None, *,
               token: str, seconds: float | None = None, database: str | None = None,
               on_job_finished: Callable[[str], None] | None = None) -> jobs.PromptFinish:
    """Record a prompt's final state (once). A prompt that ends without its graph first removes what an unfinished
    write of its graph left (``token``'s own lease, or an expired one); ``on_job_finished(job_id)`` runs when
    this outcome completed the job's counter. The prompt's heartbeat is cleared once the outcome is recorded."""
    if outcome != "done":
        discard_unfinished(driver, jobs.graph_id_for(prompt_id), token, database=database)
    result = jobs.finish_prompt(driver, prompt_id, outcome, error, seconds, database)
    if r is not None:
        try:
            jobs.clear_beat(r, jobs.job_id_of(prompt_id), prompt_id)
        except redis_lib.RedisError:
            pass  # a leftover beat of a final prompt misleads nobody: the reaper looks at running prompts only
    if result.job_finished and on_job_finished is not None:
        on_job_finished(jobs.job_id_of(prompt_id))
    return result


def run_prompt(driver: Driver, r: redis_lib.Redis, cache: ModelCache, cfg: PipelineSettings, prompt_id: str,
               database: str | None = None, on_start: Callable[[jobs.PromptWork], None] | None = None,
               on_job_finished: Callable[[str], None] | None = None, writer_token: str | None = None,
               on_fold_due: Callable[[str, int], None] | None = None, retry: bool = False) -> str:
    """Compute and store one prompt; returns its outcome ('done', 'cancelled', 'failed', or the final state
    a duplicate delivery found). Transient Neo4j/Redis errors propagate (the task retries them).
    ``on_job_finished(job_id)`` runs when this prompt's outcome was the job's last one (its corpus-done step
    folds the corpus aggregates); ``on_fold_due(corpus_id, round)`` every ``cfg.fold_every`` stored graphs
    (an incremental fold, so that aggregates grow while a long corpus runs). The graph itself is written
    without its aggregates (``fold=False``): folding is the cpu queue's job.

    ``writer_token`` names this delivery (the Celery task id: the same across its retries); ``retry``: this is a
    Celery retry of a delivery that already started the prompt (its attempt is not counted again). Raises
    ``PromptBusy`` without changing anything when another delivery of the prompt is alive (module docstring)."""
    from workers.engine.pruning import unpruned_scores
    from workers.store.from_engine import graph_to_record

    token = writer_token or uuid.uuid4().hex
    job_id = jobs.job_id_of(prompt_id)

    def finish(outcome: str, error: str | None, seconds: float | None = None) -> str:
        result = end_prompt(driver, r, prompt_id, outcome, error, token=token, seconds=seconds, database=database,
                            on_job_finished=on_job_finished)
        if (not result.job_finished and result.counted and outcome == "done" and on_fold_due is not None
                and cfg.fold_every > 0 and result.done % cfg.fold_every == 0 and work is not None):
            on_fold_due(work.corpus_id, result.done // cfg.fold_every)
        return outcome

    other = jobs.last_beat(r, job_id, prompt_id)
    if other is not None and other.runner != token and time.time() - other.at < cfg.stale_after_s:
        raise PromptBusy(f"prompt {prompt_id} is running in another delivery ({other.runner})",
                         other.at + cfg.stale_after_s - time.time() + 0.5)
    # This delivery runs the prompt from here on: beat before it shows as 'running', so that the reaper never
    # sees it running with the previous (dead) runner's stale beat.
    jobs.beat(r, job_id, prompt_id, token)
    decision, work = jobs.start_prompt(driver, prompt_id, worker_name(), database, cfg.max_attempts,
                                       count_attempt=not retry)
    if work is None:
        jobs.clear_beat(r, job_id, prompt_id)
    if decision == "cancel":
        return finish("cancelled", "job cancelled")
    if decision == "exhausted":
        return finish("failed", f"started {cfg.max_attempts} times without finishing (worker killed, hard time "
                                "limit or out of memory each time); ATLAS_PIPELINE_MAX_ATTEMPTS")
    if work is None:
        return decision  # already final: a duplicate or redelivered task
    graph_id = jobs.graph_id_for(prompt_id)
    left = lease_left_s(driver, graph_id, token, database=database)
    if left > 0:  # a dead writer's lease (a live one would have a fresh heartbeat): wait it out, then take over
        raise GraphBusy(f"graph {graph_id} is leased by another writer for {left:.1f}s more", left)
    if on_start is not None:
        on_start(work)
    t0 = time.perf_counter()

    def check(stage: str) -> None:
        if jobs.is_cancelled(r, work.job_id):
            raise PromptCancelled(f"cancelled before {stage}")

    def between_batches() -> bool:
        if cfg.fault_write_delay_s > 0:  # tests: a window in which the worker can be killed mid-write
            time.sleep(cfg.fault_write_delay_s)
        return jobs.is_cancelled(r, work.job_id)

    try:
        with Heartbeat(r, work.job_id, prompt_id, cfg.heartbeat_s, token):
            check("load")
            model = registry.get_model(driver, work.model_id, database)
            dset = registry.get_dictionary_set(driver, work.dictionary_set_id, database)
            try:
                loaded = cache.get(model, dset)
            except registry.RegisteredFilesChanged as exc:
                raise PermanentFailure(str(exc)) from exc
            if cfg.fault_delay_s > 0:  # tests: a window in which the worker can be killed mid-prompt
                time.sleep(cfg.fault_delay_s)
            g, pr = compute_graph(loaded, work, check)
            check("write")
            rec = graph_to_record(
                g, graph_id=graph_id, prompt_id=prompt_id, corpus_id=work.corpus_id, model=work.model_id,
                dictionary_set=work.dictionary_set_id, pruned=pr, max_features=work.settings.get("max_features"),
                settings=work.settings, metrics={"seconds_attribution": g.provenance.get("timings_s", {}).get("total"),
                                                 **(unpruned_scores(g) if pr is None else {})})
            write_graph(driver, rec, database=database, should_stop=between_batches, token=token,
                        fold=False, lease_s=cfg.graph_lease_s,
                        in_edge_batch=(lambda: time.sleep(cfg.fault_tx_delay_s)) if cfg.fault_tx_delay_s > 0 else None)
    except (PromptCancelled, InterruptedError) as exc:
        return finish("cancelled", str(exc), time.perf_counter() - t0)
    except PermanentFailure as exc:
        return finish("failed", str(exc), time.perf_counter() - t0)
    return finish("done", None, time.perf_counter() - t0)
