"""The real-text corpus (workers/text_corpus): a slice of two Debian sources, tokenised with Gemma 3 270M's
tokenizer, checked against its own definition: deduplicated, split by document hash, tokens that decode back
to the documents, deterministic, cached."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from workers.settings import get_settings
from workers.text_corpus import sources
from workers.text_corpus.build import (
    SPLITS,
    TOKENIZERS,
    TextCorpusSpec,
    build_text_corpus,
    deduplicated,
    normalise,
)

SPEC = TextCorpusSpec(sources=("fortunes", "debian-reference"), heldout_permille=100, max_docs_per_source=150)


@pytest.fixture(scope="module")
def built(tmp_path_factory):  # noqa: ANN001, ANN201
    settings = get_settings().model_copy(update={"cache_dir": tmp_path_factory.mktemp("cache")})
    return settings, build_text_corpus(SPEC, settings=settings, progress=False)


def test_deduplication_keeps_the_first_of_each_normalised_text() -> None:
    docs = [("a", "Hello  World."), ("b", "hello world."), ("a", "Another one"), ("b", "ANOTHER\tONE"), ("b", "x")]
    assert list(deduplicated(docs)) == [("a", "Hello  World."), ("a", "Another one"), ("b", "x")]


def test_documents_are_split_by_their_hash_and_decode_back(built) -> None:  # noqa: ANN001
    _, corpus = built
    docs = list(corpus.documents())
    m = corpus.manifest
    assert sum(m["documents"].values()) == len(docs) > 250
    assert m["sources"]["fortunes"]["documents_read"] == 150 and m["sources"]["debian-reference"]["documents_read"] == 150
    assert m["duplicates_dropped"] == 300 - len(docs)
    keys = [normalise(d["text"]) for d in docs]
    assert len(set(keys)) == len(keys), "a normalised text is in the corpus twice"
    for d, key in zip(docs, keys, strict=True):
        in_heldout = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000 < 100
        assert d["split"] == ("heldout" if in_heldout else "train")
    assert 0 < m["documents"]["heldout"] < m["documents"]["train"]

    tokenizer = TOKENIZERS[SPEC.tokenizer].load()
    for split in SPLITS:
        tokens, offsets = corpus.tokens(split), corpus.offsets(split)
        texts = [d["text"] for d in docs if d["split"] == split]
        assert len(offsets) == len(texts) + 1 and offsets[-1] == len(tokens) == m["tokens"][split]
        assert tokens.dtype == np.int32 and int(tokens.max()) < len(tokenizer)
        for i in range(0, len(texts), max(1, len(texts) // 25)):
            assert tokenizer.decode(tokens[offsets[i]:offsets[i + 1]].tolist()) == texts[i]


def test_a_second_build_is_a_cache_hit_and_a_forced_one_is_identical(built) -> None:  # noqa: ANN001
    settings, corpus = built
    manifest = corpus.root / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    again = build_text_corpus(SPEC, settings=settings, progress=False)
    assert again.root == corpus.root and manifest.stat().st_mtime_ns == stamp
    before = {p.name: p.read_bytes() for p in corpus.root.glob("*.npy")}
    rebuilt = build_text_corpus(SPEC, settings=settings, progress=False, force=True)
    assert rebuilt.root == corpus.root and manifest.stat().st_mtime_ns != stamp
    assert {p.name: p.read_bytes() for p in rebuilt.root.glob("*.npy")} == before
    assert not list(corpus.root.parent.glob("*.partial"))


def test_a_missing_package_is_named(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    monkeypatch.setattr(sources, "FORTUNES_DIR", tmp_path / "nowhere")
    with pytest.raises(sources.MissingSource, match="apt-get install -y fortunes-min"):
        list(sources.fortunes())


def test_unknown_sources_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sources"):
        TextCorpusSpec(sources=("wikipedia",))
