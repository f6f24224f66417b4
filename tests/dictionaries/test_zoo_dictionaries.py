"""The zoo's dictionary set (attention SAE + transcoder on every layer of gpt2-4l) meets the quality bar,
and the saved files reproduce the reported numbers. Uses the cached zoo build (``ensure_zoo``); the
first run on a machine builds it (about 15 minutes), hence ``slow``."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.dictionaries.activations import collect_activations
from workers.dictionaries.formats import load_dictionary_set
from workers.dictionaries.metrics import reconstruction_stats, splice_ce
from workers.dictionaries.training import check_quality_bar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo():
    from workers.zoo.build import ensure_zoo

    paths = ensure_zoo(progress=False)
    if paths.dictionaries is None:
        pytest.fail("the zoo build has no dictionary set: workers.dictionaries.training.train_zoo_dictionaries "
                    "was not found when it was built")
    return paths


def test_zoo_dictionary_set_meets_the_quality_bar(zoo):
    report = json.loads((zoo.dictionaries / "report.json").read_text())
    assert len(report["dictionaries"]) == 8
    assert check_quality_bar(report) == []
    assert report["quality_failures"] == []


def test_saved_zoo_dictionaries_reproduce_the_report(zoo):
    torch.set_num_threads(1)
    report = json.loads((zoo.dictionaries / "report.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(zoo.models["gpt2-4l"])).eval()
    ds = load_dictionary_set(zoo.dictionaries, model=model)
    assert sorted(k for k, _ in ds) == [(i, s) for i in range(4) for s in ("attn", "mlp")]
    assert ds.content_hash() == report["content_hash"]
    # The bar again, on the zoo's whole held-out corpus (disjoint from the training text, all four tasks):
    # the saved files, not just the training run, meet it. "Dead" means never firing on these tokens, so
    # the sample must be large: a third of it (~12k tokens) miscounts rare features as dead.
    from workers.zoo.corpus import read_jsonl
    from workers.zoo.tokenizer import token_ids

    vocab = AutoTokenizer.from_pretrained(str(zoo.tokenizer)).get_vocab()
    by_len: dict[int, list[list[int]]] = {}
    for ex in read_jsonl(zoo.heldout):
        ids = token_ids(vocab, ex.training_tokens())
        by_len.setdefault(len(ids), []).append(ids)
    batches = [torch.tensor(rows) for rows in by_len.values()]
    acts = collect_activations(model, batches, [k for k, _ in ds])
    for key, d in ds:
        stats = reconstruction_stats(d, *acts[key])
        assert stats.explained_variance >= 0.90 and stats.dead_fraction < 0.10, (d.cfg.name, stats)
    ce = splice_ce(model, ds, batches, per_site=False)
    assert ce["all"]["relative_increase"] <= 0.10, ce
