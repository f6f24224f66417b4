"""The zoo's cross-layer transcoder (``ensure_zoo_clt``: a separate cached artefact trained from the cached
zoo on first use, ~2 CPU minutes) beats the zoo's per-layer transcoders of the same width per layer on
held-out explained variance at equal L0, and its saved files reproduce the report."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from workers.dictionaries.crosslayer.module import CLTDictionarySet, clt_of
from workers.dictionaries.crosslayer.training import clt_reconstruction_stats
from workers.dictionaries.formats import load_dictionary_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo_clt():
    from workers.dictionaries.crosslayer.zoo import ensure_zoo_clt
    from workers.zoo.build import ensure_zoo

    zoo = ensure_zoo(progress=False)
    return zoo, ensure_zoo_clt(zoo)


def test_clt_beats_per_layer_transcoders_at_equal_l0(zoo_clt):
    _, path = zoo_clt
    r = json.loads((path / "report.json").read_text())
    clt, pl = r["clt"], r["per_layer_transcoders"]
    # same width per layer (256; the per-layer set dropped a few never-firing features) and the same k
    assert clt["total_width"] == 4 * 256 and 4 * 250 <= pl["total_width"] <= 4 * 256
    assert abs(clt["l0"] - pl["l0"]) < 0.25 and clt["l0"] <= 16 and pl["l0"] <= 16
    assert clt["explained_variance"] > pl["explained_variance"]
    # the gain is in the layers that can use earlier layers' features
    assert sum(clt["explained_variance_per_layer"][1:]) > sum(pl["explained_variance_per_layer"][1:])
    assert clt["dead_fraction"] < 0.10


def test_saved_zoo_clt_reproduces_the_report(zoo_clt):
    zoo, path = zoo_clt
    torch.set_num_threads(1)
    r = json.loads((path / "report.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(zoo.models["gpt2-4l"])).eval()
    ds = load_dictionary_set(path, model=model)
    assert isinstance(ds, CLTDictionarySet) and ds.content_hash() == r["content_hash"]
    assert [k for k, _ in ds] == [(i, "attn") for i in range(4)]
    clt = clt_of(ds)
    assert clt is not None and clt.cfg.input_site == "mlp_in" and clt.cfg.k == 16
    from workers.dictionaries.activations import collect_activations
    from workers.zoo.build import BuildSpec, dictionary_token_batches
    from workers.zoo.corpus import train_examples
    from workers.zoo.tokenizer import build_tokenizer

    spec = BuildSpec()
    batches = dictionary_token_batches(train_examples(spec.corpus), build_tokenizer().get_vocab(),
                                       spec.dictionary_batch_size, spec.dictionary_tokens)
    held = batches[-max(1, len(batches) // 10):]
    sites = [(i, "mlp") for i in range(4)]
    acts = collect_activations(model, held, sites)
    stats = clt_reconstruction_stats(clt, [acts[s][0] for s in sites], [acts[s][1] for s in sites])
    assert stats["explained_variance"] == pytest.approx(r["clt"]["explained_variance"], abs=1e-5)
    assert stats["l0"] == pytest.approx(r["clt"]["l0"], abs=1e-6)
