"""A real model: Gemma 3 270M from PyPI (GGUF, dequantised by transformers), IOI and dictionary training
at smoke size on a named layer. Loading takes about a minute on one core, hence ``slow``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from workers.dictionaries.training import TrainConfig, train_dictionaries
from workers.models.gguf import load_gemma3_270m

pytestmark = pytest.mark.slow

NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "David", "Emma", "James", "Laura", "Peter"]
PLACES = ["store", "park", "school", "office", "market", "library", "beach", "station"]
OBJECTS = ["drink", "book", "letter", "ball", "flower", "key", "gift", "ticket"]


def generated_text(n: int, seed: int = 0) -> list[str]:
    """Sentences from templates (no dataset download): IOI-style, plus plain descriptive ones."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        if i % 2 == 0:
            out.append(f"When {a} and {b} went to the {place}, {b} gave a {obj} to {a}.")
        else:
            out.append(f"{a} walked to the {place} in the morning and bought a {obj} for {b}.")
    return out


@pytest.fixture(scope="module")
def gemma():
    torch.set_num_threads(1)
    return load_gemma3_270m()


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

    train = batches(generated_text(384), 16)
    held = batches(generated_text(32, seed=1), 16)
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
