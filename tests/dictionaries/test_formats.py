"""Formats: native round trips, and each reader against fixtures written by hand in the ecosystem's
documented layout, checked against that ecosystem's formula applied to the raw tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from tests.dictionaries.test_modules import random_dictionary
from workers.dictionaries.formats import (
    detect_format,
    load_dictionary_set,
    parse_hook,
    read_circuit_tracer,
    read_lm_saes,
    read_saelens,
    save_dictionary_set,
    write_circuit_tracer,
    write_saelens,
)
from workers.dictionaries.formats.lazy import is_mapped
from workers.dictionaries.formats.native import save_native_streaming
from workers.dictionaries.modules import DictionarySet

D, S = 8, 24  # d_model, d_sae
G = torch.Generator().manual_seed(123)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


def x_batch(n: int = 200) -> torch.Tensor:
    return rnd(n, D) * 2.0


# -- native ------------------------------------------------------------------------------------

def test_native_round_trip(tmp_path: Path):
    members = {
        (0, "attn"): random_dictionary("topk", kind="sae", d_in=D, d_dict=S, k=4, seed=1),
        (0, "mlp"): random_dictionary("jumprelu", skip=True, d_in=D, d_dict=S, seed=2),
        (1, "mlp"): random_dictionary("relu", d_in=D, d_dict=S, seed=3, layer=1),
    }
    ds = DictionarySet(members, model_name="toy", model_hash="abc")
    save_dictionary_set(ds, tmp_path)
    assert detect_format(tmp_path) == "native"
    index = json.loads((tmp_path / "dictionaries.json").read_text())
    assert [e["name"] for e in index["entries"]] == ["L0.attn", "L0.mlp", "L1.mlp"]
    back = load_dictionary_set(tmp_path)
    assert (back.model_name, back.model_hash) == ("toy", "abc")
    assert back.content_hash() == ds.content_hash() == index["content_hash"]
    x = x_batch()
    for key, d in ds:
        assert back[key].cfg == d.cfg
        assert torch.equal(back[key](x), d(x))


def test_native_detects_index_mismatch(tmp_path: Path):
    ds = DictionarySet({(0, "mlp"): random_dictionary(d_in=D, d_dict=S)})
    save_dictionary_set(ds, tmp_path)
    index = json.loads((tmp_path / "dictionaries.json").read_text())
    index["entries"][0]["layer"] = 5
    (tmp_path / "dictionaries.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"says \(layer, site\) = \(5, 'mlp'\)"):
        load_dictionary_set(tmp_path)


# -- SAELens -----------------------------------------------------------------------------------

def saelens_fixture(path: Path, architecture: str, flat: bool = False, apply_b_dec: bool = True, **extra_cfg):
    """A SAELens directory as SAELens writes it: W_enc [d_in, d_sae], W_dec [d_sae, d_in]."""
    path.mkdir(parents=True, exist_ok=True)
    w = {"W_enc": rnd(D, S), "W_dec": rnd(S, D), "b_enc": rnd(S), "b_dec": rnd(D)}
    if architecture == "jumprelu":
        w["threshold"] = rnd(S).abs() * 0.5 - 0.1  # some negative: SAELens' ReLU must still apply
    cfg = {"architecture": architecture, "d_in": D, "d_sae": S, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", **extra_cfg}
    meta = {"model_name": "gpt2", "hook_name": "blocks.2.hook_attn_out", "hook_layer": 2}
    if flat:
        cfg.update(meta)
    else:
        cfg["metadata"] = meta
    save_file(w, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return w


def saelens_formula(w: dict, x: torch.Tensor, architecture: str, apply_b_dec: bool, k: int = 0) -> torch.Tensor:
    pre = (x - w["b_dec"] * apply_b_dec) @ w["W_enc"] + w["b_enc"]
    if architecture == "standard":
        acts = torch.relu(pre)
    elif architecture == "jumprelu":
        acts = torch.relu(pre) * (pre > w["threshold"])
    else:
        top = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return acts @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("architecture,flat,apply_b_dec", [
    ("standard", True, True), ("standard", False, False), ("jumprelu", False, True), ("topk", False, True),
])
def test_saelens_reader_matches_saelens_formula(tmp_path: Path, architecture, flat, apply_b_dec):
    extra = {"k": 5} if architecture == "topk" else {}
    w = saelens_fixture(tmp_path / "sae", architecture, flat=flat, apply_b_dec=apply_b_dec, **extra)
    d = read_saelens(tmp_path / "sae")
    assert (d.cfg.layer, d.cfg.site, d.cfg.kind, d.cfg.d_dict) == (2, "attn", "sae", S)
    x = x_batch()
    assert torch.allclose(d(x), saelens_formula(w, x, architecture, apply_b_dec, k=5), atol=1e-4)
    # and through the auto-detecting loader
    ds = load_dictionary_set(tmp_path / "sae")
    assert ds.model_name == "gpt2" and torch.allclose(ds[(2, "attn")](x), d(x))


def test_saelens_transcoders(tmp_path: Path):
    path = tmp_path / "tc"
    path.mkdir()
    w = {"W_enc": rnd(D, S), "W_dec": rnd(S, D), "b_enc": rnd(S), "b_dec": rnd(D), "W_skip": rnd(D, D)}
    save_file(w, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "architecture": "skip_transcoder", "d_in": D, "d_sae": S, "d_out": D, "apply_b_dec_to_input": False,
        "hook_name_out": "blocks.1.hook_mlp_out", "hook_layer_out": 1,
        "metadata": {"hook_name": "blocks.1.mlp.hook_in", "hook_layer": 1}}))
    d = read_saelens(path)
    assert (d.cfg.kind, d.cfg.layer, d.cfg.skip) == ("transcoder", 1, True)
    x = x_batch()
    expected = torch.relu(x @ w["W_enc"] + w["b_enc"]) @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T
    assert torch.allclose(d(x), expected, atol=1e-4)


def test_saelens_errors_name_key_file_and_shape(tmp_path: Path):
    path = tmp_path / "bad"
    saelens_fixture(path, "standard")
    w = {"W_enc": rnd(S, D), "W_dec": rnd(S, D), "b_enc": rnd(S), "b_dec": rnd(D)}  # W_enc transposed
    save_file(w, str(path / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"'W_enc' in .*bad/sae_weights\.safetensors has shape \[24, 8\]; expected \[8, 24\]"):
        read_saelens(path)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.2.hook_resid_pre"
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hook_resid_pre.*not a splice site"):
        read_saelens(path)
    cfg["architecture"] = "gated"
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        read_saelens(path)


def test_directory_of_saelens_dirs_and_writer_round_trip(tmp_path: Path):
    root = tmp_path / "many"
    w0 = saelens_fixture(root / "a", "standard")
    d_jump = random_dictionary("jumprelu", kind="sae", d_in=D, d_dict=S, seed=7, layer=0)
    with torch.no_grad():
        d_jump.threshold.abs_()
    write_saelens(d_jump, root / "b", model_name="gpt2")
    assert detect_format(root) == "directory"
    ds = load_dictionary_set(root)
    assert sorted(k for k, _ in ds) == [(0, "attn"), (2, "attn")]
    x = x_batch()
    assert torch.allclose(ds[(0, "attn")](x), d_jump(x), atol=1e-5)
    assert torch.allclose(ds[(2, "attn")](x), saelens_formula(w0, x, "standard", True), atol=1e-4)
    write_saelens(d_jump, root / "c")  # same (layer, site) twice
    with pytest.raises(ValueError, match=r"both hold a dictionary for \(layer 0, site 'attn'\)"):
        load_dictionary_set(root)


# -- circuit-tracer ----------------------------------------------------------------------------

def circuit_tracer_fixture(path: Path, n_layers: int, activation: str, skip: bool, input_hook: str = "mlp.hook_in"):
    """Per circuit-tracer's TranscoderSet.to_safetensors: W_enc [d_tc, d_model], W_dec [d_tc, d_model]."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model_kind": "transcoder_set", "model_name": "toy-gpt2", "feature_input_hook": input_hook,
           "feature_output_hook": "mlp.hook_out"}
    if activation in ("relu", "topk"):
        cfg["activation"] = activation
    if activation == "topk":
        cfg["k"] = 6
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    layers = []
    for i in range(n_layers):
        w = {"W_enc": rnd(S, D), "W_dec": rnd(S, D), "b_enc": rnd(S), "b_dec": rnd(D)}
        if activation == "jumprelu":
            w["activation_function.threshold"] = rnd(S) * 0.3
        if activation == "topk":
            w["k"] = torch.tensor(6)
        if skip:
            w["W_skip"] = rnd(D, D)
        save_file(w, str(path / f"layer_{i}.safetensors"))
        layers.append(w)
    return layers


def circuit_tracer_formula(w: dict, x: torch.Tensor, activation: str) -> torch.Tensor:
    pre = x @ w["W_enc"].T + w["b_enc"]
    if activation == "relu":
        acts = torch.relu(pre)
    elif activation == "jumprelu":
        acts = pre * (pre > w["activation_function.threshold"])
    else:  # circuit-tracer's TopK: the k largest, whatever their sign
        idx = pre.topk(6, dim=-1).indices
        acts = pre * torch.zeros_like(pre).scatter(-1, idx, 1.0)
    out = acts @ w["W_dec"] + w["b_dec"]
    return out + x @ w["W_skip"].T if "W_skip" in w else out


@pytest.mark.parametrize("activation,skip", [("relu", False), ("jumprelu", True), ("topk", False)])
def test_circuit_tracer_reader_matches_formula(tmp_path: Path, activation, skip):
    layers = circuit_tracer_fixture(tmp_path / "ct", 3, activation, skip)
    ds = load_dictionary_set(tmp_path / "ct")
    assert ds.model_name == "toy-gpt2" and sorted(k for k, _ in ds) == [(0, "mlp"), (1, "mlp"), (2, "mlp")]
    x = x_batch() - 1.0  # shift so that some top-k pre-activations are negative
    for i, w in enumerate(layers):
        assert torch.allclose(ds[(i, "mlp")](x), circuit_tracer_formula(w, x, activation), atol=1e-4)


def test_circuit_tracer_requires_every_layer_and_round_trips(tmp_path: Path):
    circuit_tracer_fixture(tmp_path / "ct", 3, "relu", False)
    (tmp_path / "ct" / "layer_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"layers \[1\] are missing"):
        read_circuit_tracer(tmp_path / "ct")
    members = {}
    for i in range(2):
        d = random_dictionary("topk", skip=True, d_in=D, d_dict=S, k=4, seed=10 + i, layer=i)
        members[(i, "mlp")] = d
    ds = DictionarySet(members, model_name="m")
    write_circuit_tracer(ds, tmp_path / "out")
    back = read_circuit_tracer(tmp_path / "out")
    x = x_batch().abs() + 3.0
    for key, d in ds:
        # the written set is circuit-tracer's signed TopK: identical when the k-th largest is positive
        assert back[key].cfg.topk_signed and back[key].cfg.k == 4
        pre = d.pre_activation(x)
        assert bool((pre.topk(4, dim=-1).values[:, -1] > 0).all())
        assert torch.allclose(back[key](x), d(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"missing \[0\]"):
        write_circuit_tracer(DictionarySet({(1, "mlp"): members[(1, "mlp")]}), tmp_path / "gap")


def test_ln2_hook_normalized_is_folded_with_the_model(tmp_path: Path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=D, n_layer=2, n_head=2)).eval()
    with torch.no_grad():  # make the LayerNorm gain and bias non-trivial
        for blk in model.transformer.h:
            blk.ln_2.weight.uniform_(0.5, 1.5)
            blk.ln_2.bias.normal_()
    layers = circuit_tracer_fixture(tmp_path / "ct", 2, "relu", True, input_hook="ln2.hook_normalized")
    assert load_dictionary_set(tmp_path / "ct")[(0, "mlp")].cfg.extra["input_space"] == "normalized"
    ds = load_dictionary_set(tmp_path / "ct", model=model)
    resid = x_batch()
    for i, w in enumerate(layers):
        ln = model.transformer.h[i].ln_2
        normalized = torch.nn.functional.layer_norm(resid, (D,), eps=ln.eps)  # TL's ln2.hook_normalized
        mlp_in = ln(resid)  # what our "mlp" site reads
        with torch.no_grad():
            assert torch.allclose(ds[(i, "mlp")](mlp_in), circuit_tracer_formula(w, normalized, "relu"), atol=1e-4)
    assert ds[(0, "mlp")].cfg.extra["input_space"] == "site"


# -- lazy loading (formats/lazy.py) -------------------------------------------------------------

@pytest.mark.parametrize("activation,skip", [("relu", False), ("jumprelu", True), ("topk", False)])
def test_lazy_circuit_tracer_load_is_mapped_and_matches_the_formula(tmp_path: Path, activation, skip):
    layers = circuit_tracer_fixture(tmp_path / "ct", 2, activation, skip)
    lazy, eager = load_dictionary_set(tmp_path / "ct", lazy=True), load_dictionary_set(tmp_path / "ct")
    x = x_batch() - 1.0
    for i, w in enumerate(layers):
        d = lazy[(i, "mlp")]
        assert is_mapped(d.W_enc) and is_mapped(d.W_dec) and (d.W_skip is None or is_mapped(d.W_skip))
        assert d.cfg == eager[(i, "mlp")].cfg
        assert torch.allclose(d(x), circuit_tracer_formula(w, x, activation), atol=1e-4)
    assert lazy.content_hash() == eager.content_hash()


def test_lazy_fold_writes_to_memory_not_to_the_file(tmp_path: Path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=D, n_layer=2, n_head=2)).eval()
    with torch.no_grad():
        for blk in model.transformer.h:
            blk.ln_2.weight.uniform_(0.5, 1.5)
            blk.ln_2.bias.normal_()
    circuit_tracer_fixture(tmp_path / "ct", 2, "relu", True, input_hook="ln2.hook_normalized")
    before = [(tmp_path / "ct" / f"layer_{i}.safetensors").read_bytes() for i in range(2)]
    lazy = load_dictionary_set(tmp_path / "ct", model=model, lazy=True)
    eager = load_dictionary_set(tmp_path / "ct", model=model)
    assert [(tmp_path / "ct" / f"layer_{i}.safetensors").read_bytes() for i in range(2)] == before
    x = x_batch()
    for key, d in eager:
        assert torch.equal(lazy[key](x), d(x))


def test_lazy_load_of_other_dtypes_reads_and_converts(tmp_path: Path):
    layers = circuit_tracer_fixture(tmp_path / "ct", 1, "relu", False)
    save_file({k: v.to(torch.bfloat16) for k, v in layers[0].items()}, str(tmp_path / "ct" / "layer_0.safetensors"))
    d = load_dictionary_set(tmp_path / "ct", lazy=True)[(0, "mlp")]
    assert not is_mapped(d.W_dec) and d.W_dec.dtype == torch.float32
    assert torch.equal(d.W_dec.detach(), layers[0]["W_dec"].to(torch.bfloat16).float())


def test_streaming_native_writer_writes_what_save_native_writes(tmp_path: Path):
    members = {(0, "attn"): random_dictionary("topk", kind="sae", d_in=D, d_dict=S, k=4, seed=1),
               (0, "mlp"): random_dictionary("jumprelu", skip=True, d_in=D, d_dict=S, seed=2),
               (1, "mlp"): random_dictionary("relu", d_in=D, d_dict=S, seed=3, layer=1)}
    ds = DictionarySet(members, model_name="toy", model_hash="abc")
    save_dictionary_set(ds, tmp_path / "a")
    save_native_streaming((members[k] for k in [(1, "mlp"), (0, "attn"), (0, "mlp")]), tmp_path / "b", "toy", "abc")
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    with pytest.raises(ValueError, match="same"):
        save_native_streaming([members[(0, "mlp")], members[(0, "mlp")]], tmp_path / "c")


# -- lm-saes -----------------------------------------------------------------------------------

def lm_saes_fixture(path: Path, act_fn: str, transcoder: bool, norm: str = "dataset-wise",
                    include_dec_norm: bool = True):
    path.mkdir(parents=True, exist_ok=True)
    hook_in = "blocks.3.ln2.hook_normalized" if transcoder else "blocks.3.hook_attn_out"
    hook_out = "blocks.3.hook_mlp_out" if transcoder else hook_in
    cfg = {"sae_type": "sae", "d_model": D, "expansion_factor": S // D, "hook_point_in": hook_in,
           "hook_point_out": hook_out, "act_fn": act_fn, "top_k": 5, "norm_activation": norm,
           "sparsity_include_decoder_norm": include_dec_norm, "use_decoder_bias": True}
    w = {"W_E": rnd(D, S), "b_E": rnd(S), "W_D": rnd(S, D) * 0.3, "b_D": rnd(D)}
    if act_fn == "jumprelu":
        w["activation_function.log_jumprelu_threshold"] = rnd(S) * 0.5
    w[f"dataset_average_activation_norm.{hook_in}"] = torch.tensor(11.0)
    if transcoder:
        w[f"dataset_average_activation_norm.{hook_out}"] = torch.tensor(4.0)
    save_file(w, str(path / "sae_weights.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))
    return w, cfg


def lm_saes_formula(w: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """lm-saes' forward: normalise, encode with decoder-norm sparsity, activate, decode, denormalise."""
    hi, ho = cfg["hook_point_in"], cfg["hook_point_out"]
    if cfg["norm_activation"] == "dataset-wise":
        c_in = math.sqrt(D) / float(w[f"dataset_average_activation_norm.{hi}"])
        c_out = math.sqrt(D) / float(w[f"dataset_average_activation_norm.{ho}"])
    else:
        c_in = c_out = 1.0
    h = (x * c_in) @ w["W_E"] + w["b_E"]
    n = w["W_D"].norm(dim=-1) if cfg["sparsity_include_decoder_norm"] else torch.ones(S)
    h = h * n
    if cfg["act_fn"] == "relu":
        a = h.clamp_min(0)
    elif cfg["act_fn"] == "jumprelu":
        a = h * (h > w["activation_function.log_jumprelu_threshold"].exp())
    else:
        r = h.clamp_min(0)
        idx = r.topk(cfg["top_k"], dim=-1).indices
        a = torch.zeros_like(r).scatter(-1, idx, r.gather(-1, idx))
    a = a / n
    return (a @ w["W_D"] + w["b_D"]) / c_out


@pytest.mark.parametrize("act_fn,transcoder,norm,dec_norm", [
    ("relu", False, "dataset-wise", True), ("jumprelu", True, "dataset-wise", True),
    ("topk", False, "inference", True), ("topk", True, "dataset-wise", False),
])
def test_lm_saes_reader_matches_lm_saes_formula(tmp_path: Path, act_fn, transcoder, norm, dec_norm):
    w, cfg = lm_saes_fixture(tmp_path / "ls", act_fn, transcoder, norm, dec_norm)
    d = read_lm_saes(tmp_path / "ls")
    assert (d.cfg.layer, d.cfg.site) == ((3, "mlp") if transcoder else (3, "attn"))
    assert d.cfg.extra["input_space"] == ("normalized" if transcoder else "site")
    x = x_batch() * 3
    assert torch.allclose(d(x), lm_saes_formula(w, cfg, x), atol=1e-4, rtol=1e-4)
    assert detect_format(tmp_path / "ls") == "lm-saes"


def test_lm_saes_refusals(tmp_path: Path):
    w, cfg = lm_saes_fixture(tmp_path / "ls", "relu", False, norm="token-wise")
    with pytest.raises(ValueError, match="token-wise"):
        read_lm_saes(tmp_path / "ls")
    cfg.update(norm_activation="dataset-wise", act_fn="batchtopk")
    (tmp_path / "ls" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="batchtopk"):
        read_lm_saes(tmp_path / "ls")


def test_lm_saes_2024_layout(tmp_path: Path):
    path = tmp_path / "old"
    (path / "checkpoints").mkdir(parents=True)
    enc_w, enc_b, dec_w, dec_b = rnd(S, D), rnd(S), rnd(D, S) * 0.2, rnd(D)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "decoder.bias": dec_b},
              str(path / "checkpoints" / "final.safetensors"))
    (path / "hyperparams.json").write_text(json.dumps({
        "d_model": D, "d_sae": S, "hook_point_in": "blocks.0.hook_attn_out", "hook_point_out": "blocks.0.hook_attn_out",
        "act_fn": "relu", "norm_activation": "dataset-wise", "sparsity_include_decoder_norm": True,
        "dataset_average_activation_norm": {"in": 6.0, "out": 6.0}}))
    d = load_dictionary_set(path)[(0, "attn")]
    c = math.sqrt(D) / 6.0
    x = x_batch()
    expected = (torch.relu((x * c) @ enc_w.T + enc_b) @ dec_w.T + dec_b) / c
    assert torch.allclose(d(x), expected, atol=1e-4)


# -- hooks and detection ------------------------------------------------------------------------

def test_hook_mapping():
    assert parse_hook("blocks.4.hook_attn_out", "in").layer == 4
    assert parse_hook("ln2.hook_normalized", "in", layer=2).space == "normalized"
    assert parse_hook("blocks.0.hook_mlp_out", "out").site == "mlp"
    for bad, why in [("blocks.1.attn.hook_z", "per head"), ("blocks.1.hook_resid_mid", "before the pre-MLP norm"),
                     ("blocks.1.mlp.hook_post", "hidden activation"), ("blocks.1.hook_mlp_out", "as the input")]:
        with pytest.raises(ValueError, match=why):
            parse_hook(bad, "in")


def test_unknown_directory_explains_what_it_looked_for(tmp_path: Path):
    with pytest.raises(ValueError, match=r"cannot tell the format .*dictionaries\.json.*config\.yaml"):
        load_dictionary_set(tmp_path)
