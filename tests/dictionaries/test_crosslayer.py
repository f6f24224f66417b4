"""Cross-layer transcoders: the module's formula, circuit-tracer's CLT layout (read against its formula on
the raw tensors, written and read back), the native format, input-norm folding, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from tests.dictionaries.test_modules import random_dictionary
from workers.dictionaries.crosslayer.module import CLTConfig, CLTDictionarySet, CrossLayerTranscoder, clt_of
from workers.dictionaries.formats import (
    detect_format,
    load_dictionary_set,
    save_dictionary_set,
    write_circuit_tracer_clt,
)
from workers.dictionaries.modules import DictionarySet

L, D, F = 3, 8, 12  # layers, d_model, features per source layer
G = torch.Generator().manual_seed(19)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


def random_clt(activation: str = "relu", k: int | None = None, input_site: str = "resid_mid",
               n_layers: int = L) -> CrossLayerTranscoder:
    cfg = CLTConfig(n_layers=n_layers, d_model=D, d_dict=F, activation=activation, k=k,  # type: ignore[arg-type]
                    input_site=input_site)  # type: ignore[arg-type]
    layers = [{name: rnd(*shape) * (0.3 if name == "threshold" else 1.0) for name, shape in cfg.layer_shapes(i).items()}
              for i in range(n_layers)]
    return CrossLayerTranscoder.from_layer_tensors(cfg, layers)


# -- the module --------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,k", [("relu", None), ("jumprelu", None), ("topk", 3)])
def test_each_layer_output_sums_the_writes_of_source_layers_up_to_it(activation, k):
    clt = random_clt(activation, k)
    xs = rnd(L, 5, 7, D)
    out = clt(xs)
    assert out.shape == (L, 5, 7, D)
    acts = []
    for i in range(L):
        pre = xs[i] @ clt.W_enc[i].T + clt.b_enc[i]
        if activation == "relu":
            gate = pre > 0
        elif activation == "jumprelu":
            gate = pre > clt.threshold[i]
        else:
            gate = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, pre.topk(3, -1).indices, True) & (pre > 0)
        acts.append(pre * gate)
    for m in range(L):
        expected = clt.b_dec[m] + sum(acts[s] @ clt.W_dec[s][:, m - s] for s in range(m + 1))
        assert torch.allclose(out[m], expected, atol=1e-5)
    # a feature of layer 1 writes to layers 1..L-1 and never to layer 0
    with pytest.raises(ValueError, match="writes to layers 1..2, not 0"):
        clt.decoder(1, 0)


def test_from_layer_tensors_names_key_and_expected_shape():
    cfg = CLTConfig(n_layers=L, d_model=D, d_dict=F, activation="jumprelu")
    good = [{n: torch.zeros(s) for n, s in cfg.layer_shapes(i).items()} for i in range(L)]
    bad = [dict(t) for t in good]
    bad[1]["W_dec"] = torch.zeros(F, L, D)  # layer 1 writes to L-1 layers
    with pytest.raises(ValueError, match=r"'W_dec' of source layer 1 has shape \[12, 3, 8\]; expected \[12, 2, 8\]"):
        CrossLayerTranscoder.from_layer_tensors(cfg, bad)
    nothr = [dict(t) for t in good]
    del nothr[2]["threshold"]
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['threshold'\] of source layer 2"):
        CrossLayerTranscoder.from_layer_tensors(cfg, nothr)
    with pytest.raises(ValueError, match="unknown CLT config keys"):
        CLTConfig.from_dict({**cfg.to_dict(), "skip": True})


def test_set_refuses_per_layer_transcoders_beside_a_clt():
    with pytest.raises(ValueError, match=r"per-layer transcoders at \[\(0, 'mlp'\)\]"):
        CLTDictionarySet({(0, "mlp"): random_dictionary(d_in=D)}, clt=random_clt())
    sae = random_dictionary(kind="sae", d_in=D)
    ds = CLTDictionarySet({(0, "attn"): sae}, clt=random_clt())
    assert clt_of(ds) is ds.clt and [k for k, _ in ds] == [(0, "attn")]


def test_len_counts_the_sites_replaced_as_for_a_per_site_set(tmp_path: Path):
    """len of a set = the sites it replaces (the registry's n_dictionaries): attention SAEs on every layer plus
    a CLT replace as many sites as attention SAEs plus a transcoder per layer; a CLT alone, one per layer."""
    saes = {(i, "attn"): random_dictionary(kind="sae", d_in=D, layer=i, seed=i) for i in range(L)}
    tcs = {(i, "mlp"): random_dictionary(d_in=D, layer=i, seed=10 + i) for i in range(L)}
    per_site, with_clt = DictionarySet({**saes, **tcs}), CLTDictionarySet(saes, clt=random_clt())
    assert len(per_site) == len(with_clt) == 2 * L
    assert len(CLTDictionarySet({}, clt=random_clt())) == L
    assert len(CLTDictionarySet({}, clt=random_clt(n_layers=5))) == 5
    # read back from either format, the count is the same
    save_dictionary_set(with_clt, tmp_path / "native")
    assert len(load_dictionary_set(tmp_path / "native")) == 2 * L
    write_circuit_tracer_clt(CLTDictionarySet({}, clt=random_clt()), tmp_path / "ct")
    assert len(load_dictionary_set(tmp_path / "ct")) == L
    with pytest.raises(ValueError, match="holds only the CLT"):
        write_circuit_tracer_clt(with_clt, tmp_path / "ct2")


# -- circuit-tracer's layout ---------------------------------------------------------------------

def ct_clt_fixture(path: Path, jumprelu: bool, input_hook: str = "hook_resid_mid", skip: bool = False) -> list[dict]:
    """As circuit-tracer's CrossLayerTranscoder.to_safetensors writes it (plus optional skip weights)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "model_name": "toy-gpt2", "feature_input_hook": input_hook,
        "feature_output_hook": "hook_mlp_out"}))
    layers = []
    for i in range(L):
        enc = {f"W_enc_{i}": rnd(F, D), f"b_enc_{i}": rnd(F), f"b_dec_{i}": rnd(D)}
        if jumprelu:
            enc[f"threshold_{i}"] = rnd(F).abs() * 0.5
        if skip:
            enc[f"W_skip_{i}"] = rnd(D, D)
        dec = {f"W_dec_{i}": rnd(F, L - i, D)}
        save_file(enc, str(path / f"W_enc_{i}.safetensors"))
        save_file(dec, str(path / f"W_dec_{i}.safetensors"))
        layers.append({**enc, **dec})
    return layers


def ct_clt_formula(layers: list[dict], xs: torch.Tensor) -> torch.Tensor:
    """circuit-tracer 0.5.0: encode per layer (ReLU or x·(x > θ)), compute_reconstruction = Σ decoders + b_dec[m]."""
    acts = []
    for i, w in enumerate(layers):
        pre = xs[i] @ w[f"W_enc_{i}"].T + w[f"b_enc_{i}"]
        acts.append(pre * (pre > w[f"threshold_{i}"]) if f"threshold_{i}" in w else torch.relu(pre))
    return torch.stack([layers[m][f"b_dec_{m}"] + sum(acts[s] @ layers[s][f"W_dec_{s}"][:, m - s] for s in range(m + 1))
                        for m in range(L)])


@pytest.mark.parametrize("jumprelu,skip", [(False, False), (True, True)])
def test_circuit_tracer_clt_reader_matches_its_formula(tmp_path: Path, jumprelu, skip):
    layers = ct_clt_fixture(tmp_path / "ct", jumprelu, skip=skip)
    assert detect_format(tmp_path / "ct") == "circuit-tracer"
    ds = load_dictionary_set(tmp_path / "ct")
    clt = clt_of(ds)
    assert isinstance(ds, CLTDictionarySet) and clt is not None and not ds.dictionaries and len(ds) == L
    assert (clt.cfg.activation, clt.cfg.input_site, ds.model_name) == ("jumprelu" if jumprelu else "relu",
                                                                     "resid_mid", "toy-gpt2")
    assert len(clt.cfg.extra["ignored_tensors"]) == (L if skip else 0)  # skip weights ignored, as circuit-tracer does
    xs = rnd(L, 40, D)
    with torch.no_grad():
        assert torch.allclose(clt(xs), ct_clt_formula(layers, xs), atol=1e-4)


def test_circuit_tracer_clt_errors_name_key_file_and_shape(tmp_path: Path):
    ct_clt_fixture(tmp_path / "a", False)
    save_file({"W_dec_1": rnd(F, L, D)}, str(tmp_path / "a" / "W_dec_1.safetensors"))
    with pytest.raises(ValueError, match=r"'W_dec_1' in .*W_dec_1.safetensors has shape \[12, 3, 8\]; "
                                         r"expected \[12, 2, 8\]"):
        load_dictionary_set(tmp_path / "a")
    ct_clt_fixture(tmp_path / "b", False)
    (tmp_path / "b" / "W_enc_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"source layers \[1\] are missing"):
        load_dictionary_set(tmp_path / "b")
    ct_clt_fixture(tmp_path / "c", True)
    save_file({"W_enc_2": rnd(F, D), "b_enc_2": rnd(F), "b_dec_2": rnd(D)}, str(tmp_path / "c" / "W_enc_2.safetensors"))
    with pytest.raises(ValueError, match=r"'threshold_2' missing from .*W_enc_2.safetensors \(expected shape \[12\]\)"):
        load_dictionary_set(tmp_path / "c")
    ct_clt_fixture(tmp_path / "d", False)
    save_file({"W_enc_0": rnd(F, D), "b_enc_0": rnd(F), "b_dec_0": rnd(D), "bogus": rnd(2)},
              str(tmp_path / "d" / "W_enc_0.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected tensor 'bogus'"):
        load_dictionary_set(tmp_path / "d")
    ct_clt_fixture(tmp_path / "e", False, input_hook="hook_resid_post")
    with pytest.raises(ValueError, match=r"feature_input_hook 'hook_resid_post' is not supported"):
        load_dictionary_set(tmp_path / "e")


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_circuit_tracer_clt_writer_round_trips(tmp_path: Path, activation):
    clt = random_clt(activation)
    ds = CLTDictionarySet({}, model_name="m", clt=clt)
    write_circuit_tracer_clt(ds, tmp_path / "out")
    cfg = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder" and cfg["feature_input_hook"] == "hook_resid_mid"
    back = load_dictionary_set(tmp_path / "out")
    for i in range(L):  # every tensor as written (the config differs only in provenance)
        got, want = clt_of(back).layer_tensors(i), clt.layer_tensors(i)
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    xs = rnd(L, 30, D)
    with torch.no_grad():
        assert torch.equal(clt_of(back)(xs), clt(xs))
    with pytest.raises(ValueError, match="ReLU or JumpReLU; this CLT is TopK"):
        write_circuit_tracer_clt(CLTDictionarySet({}, clt=random_clt("topk", 3)), tmp_path / "topk")


# -- native ---------------------------------------------------------------------------------------

def test_native_round_trip_with_a_clt_and_attention_saes(tmp_path: Path):
    sae = random_dictionary("topk", kind="sae", d_in=D, d_dict=F, k=4, seed=1, layer=1)
    ds = CLTDictionarySet({(1, "attn"): sae}, model_name="toy", model_hash="abc", clt=random_clt("topk", 4))
    save_dictionary_set(ds, tmp_path)
    index = json.loads((tmp_path / "dictionaries.json").read_text())
    assert index["version"] == 2 and [e["kind"] for e in index["entries"]] == ["sae", "clt"]
    assert index["entries"][1]["weights"] == [f"clt.L{i}.safetensors" for i in range(L)]
    back = load_dictionary_set(tmp_path)
    assert isinstance(back, CLTDictionarySet)
    assert back.content_hash() == ds.content_hash() == index["content_hash"]
    assert clt_of(back).cfg == ds.clt.cfg
    xs = rnd(L, 9, D)
    with torch.no_grad():
        assert torch.equal(clt_of(back)(xs), ds.clt(xs))
        assert torch.equal(back[(1, "attn")](xs[0]), sae(xs[0]))
    # per-site sets are still version 1, readable by older code
    save_dictionary_set(DictionarySet({(1, "attn"): sae}), tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "dictionaries.json").read_text())["version"] == 1


def test_native_clt_entry_must_list_every_layer(tmp_path: Path):
    save_dictionary_set(CLTDictionarySet({}, clt=random_clt()), tmp_path)
    index = json.loads((tmp_path / "dictionaries.json").read_text())
    index["entries"][0]["weights"] = index["entries"][0]["weights"][:2]
    (tmp_path / "dictionaries.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"must list 3 files .* n_layers=3"):
        load_dictionary_set(tmp_path)


# -- input sites ------------------------------------------------------------------------------------

def test_ln2_hook_normalized_clt_is_folded_with_the_model(tmp_path: Path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=D, n_layer=L, n_head=2)).eval()
    with torch.no_grad():
        for blk in model.transformer.h:
            blk.ln_2.weight.uniform_(0.5, 1.5)
            blk.ln_2.bias.normal_()
    layers = ct_clt_fixture(tmp_path / "ct", True, input_hook="ln2.hook_normalized")
    assert clt_of(load_dictionary_set(tmp_path / "ct")).cfg.input_site == "normalized"
    clt = clt_of(load_dictionary_set(tmp_path / "ct", model=model))
    assert clt.cfg.input_site == "mlp_in"
    resid = rnd(L, 20, D)
    normalized = torch.stack([torch.nn.functional.layer_norm(resid[i], (D,), eps=model.transformer.h[i].ln_2.eps)
                              for i in range(L)])
    with torch.no_grad():
        mlp_in = torch.stack([model.transformer.h[i].ln_2(resid[i]) for i in range(L)])
        assert torch.allclose(clt(mlp_in), ct_clt_formula(layers, normalized), atol=1e-4)
    wrong = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=D, n_layer=L + 1, n_head=2))
    with pytest.raises(ValueError, match="spans 3 layers of width 8; the model has 4 layers"):
        load_dictionary_set(tmp_path / "ct", model=wrong)


# -- splicing a CLT into a live model (metrics) -----------------------------------------------------

@pytest.mark.parametrize("input_site", ["resid_mid", "mlp_in"])
def test_clt_spliced_replaces_every_mlp_output_by_the_reconstruction(input_site):
    from workers.dictionaries.crosslayer.training import clt_spliced

    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=D, n_layer=L, n_head=2)).eval()
    clt = random_clt("jumprelu", input_site=input_site)
    seen: dict[str, dict[int, torch.Tensor]] = {"resid_mid": {}, "mlp_in": {}, "out": {}}
    hooks = []

    def keep_mlp(i: int):
        def hook(_m, args, out):
            seen["mlp_in"][i], seen["out"][i] = args[0], out
        return hook

    for i, blk in enumerate(model.transformer.h):
        hooks.append(blk.ln_2.register_forward_hook(lambda m, a, o, i=i: seen["resid_mid"].__setitem__(i, a[0])))
        hooks.append(blk.mlp.register_forward_hook(keep_mlp(i)))
    ids = torch.randint(0, 50, (2, 10), generator=G)
    with torch.no_grad(), clt_spliced(model, clt):
        spliced_logits = model(input_ids=ids).logits
    with torch.no_grad():
        xs = torch.stack([seen[input_site][i] for i in range(L)])
        expected = clt(xs)
        for m in range(L):  # the hooks above ran before the splice: "out" holds the MLP's own output...
            assert not torch.allclose(seen["out"][m], expected[m])
        for h in hooks:
            h.remove()
        # ...so check the splice through the residual stream instead: rerun with each MLP forced to `expected`
        handles = [blk.mlp.register_forward_hook(lambda m, a, o, i=i: expected[i])
                   for i, blk in enumerate(model.transformer.h)]
        forced = model(input_ids=ids).logits
        for h in handles:
            h.remove()
    assert torch.allclose(spliced_logits, forced, atol=1e-5)


def test_source_layer_view_is_the_engine_dictionary_of_one_source_layer():
    from workers.dictionaries.crosslayer.module import SourceLayer

    clt = random_clt("jumprelu")
    v = SourceLayer(clt, 1)
    x = rnd(6, D)
    assert v.cfg.name == "L1.mlp" and v.writes == [1, 2] and v.W_skip is None and v.skip_out(x) is None
    assert torch.equal(v.encode(x), clt.encode(1, x)) and torch.equal(v.b_dec, clt.b_dec[1])
    assert v.W_dec.shape == (F, 2 * D) and v.W_dec.data_ptr() == clt.W_dec[1].data_ptr()  # a view
    # a feature's edge from concatenated gradients = the sum of its writes' edges
    g = {m: rnd(D) for m in (1, 2)}
    a = 0.7
    for f in (0, 5):
        ext = a * v.W_dec[f] @ torch.cat([g[1], g[2]])
        assert torch.allclose(ext, sum(a * clt.decoder(1, m)[f] @ g[m] for m in (1, 2)), atol=1e-5)
        parts = v.split_writes(v.W_dec[f])
        assert torch.equal(parts[2], clt.decoder(1, 2)[f])
