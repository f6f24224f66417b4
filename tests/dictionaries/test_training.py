"""Activation capture, splicing, metrics and training, on tiny models and ground-truth data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from workers.dictionaries.activations import collect_activations
from workers.dictionaries.formats import load_dictionary_set
from workers.dictionaries.metrics import cross_entropy, reconstruction_stats, splice_ce, spliced
from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet
from workers.dictionaries.training import (
    DictionaryTrainer,
    TrainConfig,
    check_quality_bar,
    prune_never_firing,
    train_dictionaries,
    train_dictionary,
)
from workers.models.sites import site_module

torch.set_num_threads(1)
D = 32


def tiny_gpt2(n_layer: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=D, n_layer=n_layer, n_head=4)).eval()


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def token_batches(n: int = 6, batch: int = 4, seq: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (batch, seq), generator=g) for _ in range(n)]


def identity_sae(layer: int, d: int = D) -> Dictionary:
    """x = relu(x) − relu(−x): an exact SAE with features ±e_i."""
    cfg = DictionaryConfig(kind="sae", site="attn", layer=layer, d_in=d, d_out=d, d_dict=2 * d)
    eye = torch.eye(d)
    W = torch.cat([eye, -eye])
    return Dictionary.from_tensors(cfg, {"W_enc": W, "b_enc": torch.zeros(2 * d), "W_dec": W, "b_dec": torch.zeros(d)})


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_captured_pairs_are_the_site_modules_io(make):
    model = make()
    sites = [(0, "attn"), (1, "mlp"), (0, "mlp")]
    acts = collect_activations(model, token_batches(2), sites, drop_positions=1)
    X, Y = acts[(0, "attn")]
    assert X.shape == (2 * 4 * 15, D) and torch.equal(X, Y)
    for layer in (0, 1):
        X, Y = acts[(layer, "mlp")]
        with torch.no_grad():
            assert torch.allclose(site_module(model, layer, "mlp")(X), Y, atol=1e-5)
    assert collect_activations(model, token_batches(5), [(0, "attn")], max_tokens=70)[(0, "attn")][0].shape[0] == 70


def test_splice_by_hook_equals_replacing_the_module():
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(3)
    cfg = DictionaryConfig(kind="transcoder", site="mlp", layer=1, d_in=D, d_out=D, d_dict=48, skip=True)
    tc = Dictionary.from_tensors(cfg, {k: torch.randn(s, generator=g) * 0.2 for k, s in cfg.tensor_shapes().items()})
    ds = DictionarySet({(1, "mlp"): tc, (0, "attn"): identity_sae(0)})
    tokens = token_batches(1)[0]
    with torch.no_grad():
        clean = model(input_ids=tokens).logits
        with spliced(model, ds, [(0, "attn")]):
            assert torch.allclose(model(input_ids=tokens).logits, clean, atol=1e-5)  # exact SAE: no change
        with spliced(model, ds):
            hooked = model(input_ids=tokens).logits
        original = model.transformer.h[1].mlp
        model.transformer.h[1].mlp = tc
        try:
            replaced = model(input_ids=tokens).logits
        finally:
            model.transformer.h[1].mlp = original
        assert torch.allclose(hooked, replaced, atol=1e-5)
        assert not torch.allclose(hooked, clean, atol=1e-3)
        assert torch.allclose(model(input_ids=tokens).logits, clean)  # hooks removed


def test_splice_ce_is_zero_for_exact_dictionaries_and_moves_for_broken_ones():
    model = tiny_gpt2()
    batches = token_batches(2)
    exact = DictionarySet({(0, "attn"): identity_sae(0), (1, "attn"): identity_sae(1)})
    r = splice_ce(model, exact, batches)
    assert r["clean"] == pytest.approx(cross_entropy(model, batches))
    assert abs(r["all"]["relative_increase"]) < 1e-5 and set(r["sites"]) == {"L0.attn", "L1.attn"}
    broken = identity_sae(1)
    with torch.no_grad():
        broken.W_dec.mul_(25.0)
    r = splice_ce(model, DictionarySet({(1, "attn"): broken}), batches, per_site=False)
    assert abs(r["all"]["increase"]) > 1e-3  # a random model: the sign of the change is arbitrary


def sparse_ground_truth(n: int, d: int = D, n_atoms: int = 48, active: int = 3, scale: float = 37.0, seed: int = 0):
    """x = Σ_{3 random atoms} c·atom with c > 0: a dictionary of 48 features explains it exactly."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:active] for _ in range(n)])
    coef = torch.rand(n, active, generator=g) + 0.5
    codes = torch.zeros(n, n_atoms).scatter(-1, idx, coef)
    return scale * codes @ atoms


def test_topk_training_recovers_sparse_ground_truth():
    X = sparse_ground_truth(20000)
    cfg = DictionaryConfig(kind="sae", site="attn", layer=0, d_in=D, d_out=D, d_dict=64, activation="topk", k=4)
    d, hist = train_dictionary(cfg, X[:18000], X[:18000], TrainConfig(d_dict=64, k=4, steps=400, batch_size=512,
                                                                                 lr=5e-3), progress=False)
    stats = reconstruction_stats(d, X[18000:], X[18000:])  # held out, in the data's own scale (×37)
    assert stats.explained_variance > 0.9
    assert stats.l0 <= 4.0
    assert hist.explained_variance[-1] > hist.explained_variance[0]
    assert len(hist.step) == len(hist.l0) == len(hist.loss)


@pytest.mark.parametrize("batch", [1000, 4096, 333])
def test_reconstruction_stats_in_any_batching_are_the_direct_formulas(batch):
    X = sparse_ground_truth(1000) + 5.0  # an offset: the EV's mean must be the mean over all rows, not per batch
    cfg = DictionaryConfig(kind="transcoder", site="mlp", layer=0, d_in=D, d_out=D, d_dict=64, activation="topk",
                           k=4, skip=True)
    d, _ = train_dictionary(cfg, X, X.flip(-1), TrainConfig(d_dict=64, k=4, steps=30, batch_size=256), progress=False)
    Y = X.flip(-1)
    stats = reconstruction_stats(d, X, Y, batch=batch)
    with torch.no_grad():
        x, y = X.double(), Y.double()
        pre = x @ d.W_enc.double().T + d.b_enc.double()
        top = pre.topk(4, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
        y_hat = acts @ d.W_dec.double() + d.b_dec.double() + x @ d.W_skip.double().T
    sse = float(((y - y_hat) ** 2).sum())
    assert stats.explained_variance == pytest.approx(1 - sse / float(((y - y.mean(0)) ** 2).sum()), abs=1e-6)
    assert stats.mse == pytest.approx(sse / Y.numel(), rel=1e-5)
    assert stats.l0 == pytest.approx(float((acts > 0).sum(-1).double().mean()), abs=1e-9)
    assert stats.dead_fraction == float(((acts > 0).sum(0) == 0).double().mean())
    assert stats.n_tokens == 1000


def test_jumprelu_training_trades_l0_for_error():
    X = sparse_ground_truth(12000, seed=1)
    cfg = DictionaryConfig(kind="sae", site="attn", layer=0, d_in=D, d_out=D, d_dict=64, activation="jumprelu")
    results = {}
    for coef in (1e-4, 3e-2):
        d, _ = train_dictionary(cfg, X[:10000], X[:10000],
                                TrainConfig(d_dict=64, activation="jumprelu", l0_coef=coef, steps=300, batch_size=512),
                                progress=False)
        results[coef] = reconstruction_stats(d, X[10000:], X[10000:])
        assert bool((d.threshold > 0).all())
    assert results[1e-4].explained_variance > 0.9
    assert results[3e-2].l0 < results[1e-4].l0


def test_skip_transcoder_starts_from_the_least_squares_map():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(8000, D, generator=g) * 5
    A, b = torch.randn(D, D, generator=g), torch.randn(D, generator=g)
    Y = X @ A.T + b
    cfg = DictionaryConfig(kind="transcoder", site="mlp", layer=0, d_in=D, d_out=D, d_dict=64, activation="topk", k=4,
                           skip=True)
    d, _ = train_dictionary(cfg, X, Y, TrainConfig(d_dict=64, k=4, skip=True, steps=20, batch_size=256), progress=False)
    assert reconstruction_stats(d, X, Y).explained_variance > 0.999


@pytest.mark.parametrize("skip", [False, True])
def test_centred_training_folds_the_mean_into_the_biases_exactly(skip):
    # The trainer's own reconstruction (inputs scaled, centred) equals the finished dictionary's on the raw inputs.
    g = torch.Generator().manual_seed(3)
    X = torch.randn(4000, D, generator=g) + 20 * torch.randn(D, generator=g)
    Y = torch.relu(X) @ torch.randn(D, D, generator=g) + 5
    tc = TrainConfig(d_dict=64, k=4, skip=skip, steps=50, batch_size=256, init="random", centre_inputs=True)
    cfg = DictionaryConfig(kind="transcoder", site="mlp", layer=0, d_in=D, d_out=D, d_dict=64, activation="topk", k=4,
                           skip=skip)
    trainer = DictionaryTrainer(cfg, X, Y, tc)
    for i in range(tc.steps):
        trainer.step(X[i * 64:i * 64 + 256], Y[i * 64:i * 64 + 256])
    assert float(trainer.mu_in.norm()) > 0.5 * math.sqrt(D)  # the mean is a large part of these inputs
    with torch.no_grad():
        t = trainer.d
        xs = X * trainer.c_in - trainer.mu_in
        pre = xs @ t.W_enc.T + t.b_enc
        vals, idx = pre.topk(4, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, idx, vals.clamp_min(0))
        inside = acts @ t.W_dec + t.b_dec + (xs @ t.W_skip.T if skip else 0)
    d, _ = trainer.finish()
    expected = inside / trainer.c_out  # float32 rounding differs in the last bits: tolerance relative to the scale
    torch.testing.assert_close(d(X), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_centring_keeps_topk_features_alive_where_a_large_mean_kills_them():
    # Sparse ground truth on top of a constant 4× its size: uncentred, the mean dominates every pre-activation and
    # TopK keeps picking the same features (here half of them die); centred, none dies, at the same EV (≈ 0.75 after
    # 400 steps either way).
    g = torch.Generator().manual_seed(4)
    offset = torch.randn(D, generator=g)
    X = sparse_ground_truth(12000, seed=2)
    X = X + 4 * X.norm(dim=-1).mean() * offset / offset.norm()
    cfg = DictionaryConfig(kind="sae", site="attn", layer=0, d_in=D, d_out=D, d_dict=64, activation="topk", k=4)
    stats = {}
    for centre in (False, True):
        tc = TrainConfig(d_dict=64, k=4, steps=400, batch_size=512, lr=5e-3, init="random", centre_inputs=centre)
        d, _ = train_dictionary(cfg, X[:10000], X[:10000], tc, progress=False)
        stats[centre] = reconstruction_stats(d, X[10000:], X[10000:])
    assert stats[True].dead_fraction < 0.05
    assert stats[False].dead_fraction > stats[True].dead_fraction + 0.3
    assert stats[True].explained_variance > 0.65


def test_train_dictionaries_writes_a_loadable_set_with_reports(tmp_path: Path):
    model = tiny_gpt2()
    sites = [(0, "attn"), (0, "mlp"), (1, "mlp")]
    tc = TrainConfig(d_dict=64, k=4, steps=40, batch_size=128, log_every=10)
    ds, report = train_dictionaries(model, token_batches(8), sites, tmp_path,
                                    train_cfg={"attn": tc, "mlp": TrainConfig(**{**tc.__dict__, "skip": True})},
                                    heldout_batches=token_batches(2, seed=9), model_name="tiny", progress=False)
    for name in ("L0.attn", "L0.mlp", "L1.mlp"):
        assert (tmp_path / f"{name}.report.png").stat().st_size > 1000
        rep = json.loads((tmp_path / f"{name}.report.json").read_text())
        assert rep["metrics"]["n_tokens"] == 2 * 4 * 16 and len(rep["history"]["step"]) == 5  # steps 0, 10, 20, 30 and the last
        assert report["dictionaries"][name]["explained_variance"] == rep["metrics"]["explained_variance"]
    assert ds[(0, "mlp")].cfg.skip and not ds[(0, "attn")].cfg.skip
    back = load_dictionary_set(tmp_path)
    assert back.content_hash() == ds.content_hash() == report["content_hash"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["cross_entropy"]["sites"]) == {"L0.attn", "L0.mlp", "L1.mlp"}
    fails = check_quality_bar(saved, min_ev=2.0)  # an impossible bar fails, naming every dictionary
    assert len([f for f in fails if "explained variance" in f]) == 3


def test_pruning_never_firing_features_keeps_the_function_on_the_data():
    X = sparse_ground_truth(4000, seed=3)
    cfg = DictionaryConfig(kind="sae", site="attn", layer=0, d_in=D, d_out=D, d_dict=96, activation="topk", k=4)
    d, _ = train_dictionary(cfg, X, X, TrainConfig(d_dict=96, k=4, steps=60, batch_size=256), progress=False)
    with torch.no_grad():  # make sure some features never fire: push their encoder bias far down
        d.b_enc[:10] = -1e6
    pruned, n = prune_never_firing(d, X)
    assert n >= 10 and pruned.cfg.d_dict == 96 - n and pruned.cfg.extra["pruned_never_firing"] == n
    assert torch.allclose(pruned(X), d(X), atol=1e-4)
    assert reconstruction_stats(pruned, X, X).dead_fraction == 0.0
