"""Build the zoo once per content hash: corpus, tokenizer, tiny models, and the gpt2-4l dictionary set.

``ensure_zoo()`` is what tests, the demo and the CLI call. The build lives in
``settings.zoo_dir/<build_key>/`` where ``build_key`` hashes the zoo's and the dictionaries' source
files and the build spec, so editing either rebuilds, and an unchanged checkout reuses the cache.

Layout of a finished build::

    <build_key>/
      COMPLETE                      written last (contains the build key)
      report.json                   timings, accuracies, dictionary metrics, spec
      corpus/heldout.jsonl          held-out examples (Example per line), disjoint from training
      tokenizer/                    the word-level tokenizer (also copied into each model dir)
      models/<name>/                config.json, model.safetensors, tokenizer files, zoo.json
      dictionaries/gpt2-4l/         attention SAE + transcoder per layer (when dictionary training exists)
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from workers.settings import Settings, get_settings
from workers.zoo.corpus import CorpusSpec, Example, heldout_examples, train_examples, write_jsonl
from workers.zoo.tokenizer import build_tokenizer, save_tokenizer, token_ids
from workers.zoo.training import ModelSpec, evaluate, save_model, train_model

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../workers
DICTIONARY_MODEL = "gpt2-4l"
ACCURACY_BAR = 0.95  # issue #3: the 4-layer GPT-2 reaches >= 95% on each task's held-out answers
MARKER = "COMPLETE"


# Small batches and many steps: on a CPU the circuits (IOI name movers, induction heads) appear after
# a number of updates rather than of tokens; extra weight on the answers focuses those updates. The
# attention hints (training.hint_loss) get induction past its plateau inside the budget and, on the
# 4-layer model the circuits are read from, make one head carry the bracket match and the heads of
# layers 2-3 the IO name, so the answer's information comes from its source position rather than from
# every look-alike (training.HINT_HEADS).
_RECIPE = dict(batch_size=32, lr=1e-3, answer_weight=5.0)
_INDUCTION_HINTS = ("previous_token", "induction")
_ALL_HINTS = (*_INDUCTION_HINTS, "bracket", "name_mover")


@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines the build's output besides source code and library versions."""

    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    models: tuple[ModelSpec, ...] = (
        ModelSpec(name="gpt2-4l", arch="gpt2", n_layer=4, steps=4000, attention_hints=_ALL_HINTS, **_RECIPE),
        ModelSpec(
            name="gpt2-2l", arch="gpt2", n_layer=2, steps=3000, attention_hints=_INDUCTION_HINTS, **_RECIPE
        ),
        ModelSpec(
            name="llama-2l", arch="llama", n_layer=2, steps=3000, attention_hints=_INDUCTION_HINTS, **_RECIPE
        ),
    )
    dictionary_model: str = DICTIONARY_MODEL
    dictionary_batch_size: int = 32
    # Text handed to dictionary training (it keeps 10% of the batches for its held-out metrics).
    dictionary_tokens: int = 300_000
    train_dictionaries: bool = True  # False: models only (quick builds in tests of the caching itself)
    max_parallel_models: int = 2  # worker processes training models at once (capped by the core count)

    def to_dict(self) -> dict:
        return {
            "corpus": self.corpus.to_dict(),
            "models": [m.to_dict() for m in self.models],
            "dictionary_model": self.dictionary_model,
            "dictionary_batch_size": self.dictionary_batch_size,
            "dictionary_tokens": self.dictionary_tokens,
            "train_dictionaries": self.train_dictionaries,
        }


@dataclass(frozen=True)
class ZooPaths:
    root: Path
    models: dict[str, Path]  # name -> HF model directory
    dictionaries: Path | None  # dictionary set of gpt2-4l; None when dictionary training is not available
    heldout: Path  # JSONL of corpus.Example
    report: Path  # report.json
    tokenizer: Path


def hashed_source_files() -> list[Path]:
    """Source files whose content is part of the build key: the zoo (minus its CLI, which does not
    change what is built), the dictionaries package (its training makes the zoo's dictionary set)
    and the model-site lookup that training relies on."""
    files = [p for p in sorted((PACKAGE_ROOT / "zoo").glob("*.py")) if p.name != "cli.py"]
    files += sorted((PACKAGE_ROOT / "dictionaries").glob("*.py"))
    files.append(PACKAGE_ROOT / "models" / "sites.py")
    return files


def build_key(spec: BuildSpec | None = None) -> str:
    spec = spec or BuildSpec()
    h = hashlib.sha256()
    for p in hashed_source_files():
        h.update(str(p.relative_to(PACKAGE_ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    # Other library versions can change the numbers or the saved format.
    h.update(f"torch={torch.__version__};transformers={transformers.__version__}".encode())
    return h.hexdigest()[:16]


def _paths(root: Path, spec: BuildSpec, with_dictionaries: bool) -> ZooPaths:
    return ZooPaths(
        root=root,
        models={m.name: root / "models" / m.name for m in spec.models},
        dictionaries=(root / "dictionaries" / spec.dictionary_model) if with_dictionaries else None,
        heldout=root / "corpus" / "heldout.jsonl",
        report=root / "report.json",
        tokenizer=root / "tokenizer",
    )


def find_dictionary_trainer() -> Callable | None:
    """The dictionaries package's ``train_zoo_dictionaries``, or None while it does not exist yet."""
    try:
        module = importlib.import_module("workers.dictionaries.training")
    except ModuleNotFoundError as e:
        if e.name != "workers.dictionaries.training":
            raise  # the module exists but one of its imports is missing: a real error
        return None
    return getattr(module, "train_zoo_dictionaries", None)


def dictionary_token_batches(
    examples: Sequence[Example], vocab: dict[str, int], batch_size: int, max_tokens: int, seed: int = 0
) -> list[torch.Tensor]:
    """Deterministic ``[batch, seq]`` id tensors of training text, about ``max_tokens`` tokens in all.

    Each batch holds sequences of one length, so no padding token ever reaches a dictionary's training
    activations, and every sequence starts with BOS at position 0 as prompts do.
    """
    by_len: dict[int, list[list[int]]] = {}
    total = 0
    for ex in examples:
        if total >= max_tokens:
            break
        ids = token_ids(vocab, ex.training_tokens())
        by_len.setdefault(len(ids), []).append(ids)
        total += len(ids)
    chunks = [
        rows[i : i + batch_size]
        for _, rows in sorted(by_len.items())
        for i in range(0, len(rows), batch_size)
    ]
    random.Random(seed).shuffle(chunks)
    return [torch.tensor(c, dtype=torch.long) for c in chunks]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Inter-process lock, so two pytest workers (or CI and the demo) never build the same zoo at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises SystemExit (so ``with`` blocks clean up) instead of killing the
    process outright. Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def ensure_zoo(
    settings: Settings | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    spec: BuildSpec | None = None,
) -> ZooPaths:
    """The built zoo, building it first if this content hash has no finished build (or ``force``).

    Returns immediately when ``<zoo_dir>/<build_key>/COMPLETE`` exists. Otherwise builds into
    ``<build_key>.partial/`` under a file lock, writes the marker last and renames the directory into
    place, so a crashed build is never mistaken for a finished one.
    """
    settings = settings or get_settings()
    spec = spec or BuildSpec()
    key = build_key(spec)
    root = settings.zoo_dir / key
    trainer = find_dictionary_trainer() if spec.train_dictionaries else None

    def finished() -> ZooPaths | None:
        if not force and (root / MARKER).is_file():
            report = json.loads((root / "report.json").read_text())
            return _paths(root, spec, with_dictionaries=report.get("dictionaries") is not None)
        return None

    if (done := finished()) is not None:
        return done
    with _exclusive(settings.zoo_dir / f"{key}.lock"):
        if (done := finished()) is not None:  # another process finished it while we waited
            return done
        partial = settings.zoo_dir / f"{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        # The build runs torch in deterministic mode; the caller's mode is its own business afterwards.
        deterministic = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            report = _build(partial, spec, key, trainer, progress)
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        (partial / MARKER).write_text(key + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(partial, root)
        return _paths(root, spec, with_dictionaries=report["dictionaries"] is not None)


def _build(out: Path, spec: BuildSpec, key: str, trainer: Callable | None, progress: bool) -> dict:

    torch.use_deterministic_algorithms(True, warn_only=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    _log(progress, f"building zoo {key} in {out}")
    t = time.perf_counter()
    train = train_examples(spec.corpus)
    heldout = heldout_examples(spec.corpus, train)
    paths = _paths(out, spec, with_dictionaries=trainer is not None)
    write_jsonl(heldout, paths.heldout)
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, paths.tokenizer)
    timings["corpus"] = time.perf_counter() - t
    _log(progress, f"zoo {key}: corpus of {len(train)} training / {len(heldout)} held-out examples "
                   f"in {timings['corpus']:.1f}s")  # fmt: skip

    # One process per model, one thread each: on 2 cores two single-threaded trainings beat one
    # two-threaded training at a time (the matrices are too small to split well), and a fixed thread
    # count keeps the result independent of the machine's core count.
    t = time.perf_counter()
    n_workers = max(1, min(len(spec.models), os.cpu_count() or 1, spec.max_parallel_models))
    if n_workers == 1:  # no worker processes to start (their imports cost seconds)
        threads = torch.get_num_threads()
        try:
            model_reports = {
                ms.name: _train_one(ms, spec.corpus, paths.models[ms.name], key, progress, 0)
                for ms in spec.models
            }
        finally:
            torch.set_num_threads(threads)
    else:
        # A Pool, not a ProcessPoolExecutor: leaving its block terminates the workers, so an interrupted or
        # failed build (Ctrl-C, SIGTERM, an exception) does not leave trainings running on.
        ctx = multiprocessing.get_context("spawn")
        with _sigterm_raises(), ctx.Pool(n_workers) as pool:
            pending = {
                ms.name: pool.apply_async(
                    _train_one, (ms, spec.corpus, paths.models[ms.name], key, progress, i)
                )
                for i, ms in enumerate(spec.models)
            }
            model_reports = {name: r.get() for name, r in pending.items()}
            pool.close()  # done: let the workers exit on their own (leaving the block would kill them)
            pool.join()
    timings["models (wall)"] = time.perf_counter() - t
    for name, info in model_reports.items():
        timings[f"train {name}"] = info["train_seconds"]
        acc = ", ".join(f"{t} {a:.3f}" for t, a in info["heldout"]["accuracy"].items())
        _log(progress, f"  {name}: {info['train_seconds']:.0f}s, held-out accuracy {acc}")

    dict_report = None
    if trainer is not None:
        t = time.perf_counter()
        dict_report = trainer(
            paths.models[spec.dictionary_model],
            dictionary_token_batches(
                train, tokenizer.get_vocab(), spec.dictionary_batch_size, spec.dictionary_tokens
            ),
            paths.dictionaries,
            progress,
        )
        timings["dictionaries"] = time.perf_counter() - t
    elif spec.train_dictionaries:
        _log(
            progress,
            "  dictionaries: skipped (workers.dictionaries.training.train_zoo_dictionaries not found)",
        )

    timings["total"] = time.perf_counter() - t_start
    report = {
        "build_key": key,
        "spec": spec.to_dict(),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "models": model_reports,
        "dictionaries": dict_report,
        "accuracy_bar": {"model": DICTIONARY_MODEL, "min_accuracy": ACCURACY_BAR},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    return report


def _train_one(ms: ModelSpec, corpus: CorpusSpec, out_dir: Path, key: str, progress: bool, slot: int) -> dict:
    """Train, score and save one model (runs in a worker process). Returns its zoo.json content."""
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    train = train_examples(corpus)
    heldout = heldout_examples(corpus, train)
    tokenizer = build_tokenizer()
    bar = tqdm(total=ms.steps, desc=f"train {ms.name}", disable=not progress, unit="step", position=slot)

    def tick(step: int, loss: float, _model) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    result = train_model(ms, train, tokenizer, progress=tick)
    bar.close()
    scores = evaluate(result.model, heldout, tokenizer)
    info = {
        "name": ms.name,
        "spec": ms.to_dict(),
        "train_seconds": round(result.seconds, 2),
        "final_train_loss": round(result.final_loss, 4),
        "heldout": scores,
        "n_parameters": sum(p.numel() for p in result.model.parameters()),
        "seed": ms.seed,
        "corpus": corpus.to_dict(),
        "build_key": key,
    }
    save_model(result.model, tokenizer, out_dir)
    (out_dir / "zoo.json").write_text(json.dumps(info, indent=2))
    return info


def _jsonable(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)  # type: ignore[arg-type]
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def read_report(paths: ZooPaths) -> dict:
    return json.loads(paths.report.read_text())
