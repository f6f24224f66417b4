"""A real model: Gemma 3 270M from PyPI (GGUF, dequantised by transformers), IOI and dictionary training
at smoke size on a named layer. Loading takes about a minute on one core, hence ``slow`` (the ``gemma`` fixture
is the session's, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.case_studies.ioi import template_sentences
from workers.dictionaries.training import TrainConfig, train_dictionaries

pytestmark = pytest.mark.slow

def test_gemma3_answers_ioi(gemma):
    model, tok = gemma
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    for prompt, answer in [("When Mary and John went to the store, John gave a drink to", " Mary"),
                           ("When Alice and Bob went to the park, Alice gave a ball to", " Bob")]:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0, 0] == tok.bos_token_id
        with torch.no_grad():
            top = int(model(input_ids=ids).logits[0, -1].argmax())
        assert tok.decode([top]) == answer


def test_transcoder_training_on_gemma3_layer6_smoke(gemma, tmp_path: Path):
    model, tok = gemma

    def batches(texts: list[str], size: int) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(texts), size):
            enc = tok(texts[i:i + size], return_tensors="pt", padding="longest")
            lengths = enc.attention_mask.sum(-1)
            out.append(enc.input_ids[:, : int(lengths.min())])  # no padding reaches the activations
        return out

    train = batches(template_sentences(384), 16)
    held = batches(template_sentences(32, seed=1), 16)
    tc = TrainConfig(d_dict=512, k=32, steps=250, batch_size=256, lr=2e-3)
    ds, report = train_dictionaries(model, train, [(6, "mlp")], tmp_path, train_cfg=tc, heldout_batches=held,
                                    drop_positions=1, model_name="gemma-3-270m", splice_per_site=False,
                                    progress=False)
    r = report["dictionaries"]["L6.mlp"]
    print(json.dumps(report, indent=1))
    assert (tmp_path / "L6.mlp.report.png").is_file() and (tmp_path / "dictionaries.json").is_file()
    assert ds[(6, "mlp")].cfg.d_in == 640 and r["l0"] <= 32
    assert r["explained_variance"] > 0.5
    ce = report["cross_entropy"]
    assert ce["all"]["ce"] > 0 and ce["clean"] > 0
