"""The canonical dictionary: gates per activation, stage composition, construction checks, hashing."""

from __future__ import annotations

import pytest
import torch

from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet


def random_dictionary(activation: str = "relu", skip: bool = False, kind: str = "transcoder", d_in: int = 6,
                      d_dict: int = 10, k: int | None = 3, seed: int = 0, layer: int = 0, signed: bool = False) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    site = "mlp" if kind == "transcoder" else "attn"
    cfg = DictionaryConfig(kind=kind, site=site, layer=layer, d_in=d_in, d_out=d_in, d_dict=d_dict,  # type: ignore[arg-type]
                           activation=activation, k=k if activation == "topk" else None,  # type: ignore[arg-type]
                           skip=skip, topk_signed=signed)
    tensors = {name: torch.randn(shape, generator=g) for name, shape in cfg.tensor_shapes().items()}
    return Dictionary.from_tensors(cfg, tensors)


def test_relu_and_jumprelu_gates():
    d = random_dictionary("jumprelu")
    pre = torch.randn(50, 10)
    assert torch.equal(d.gate(pre), pre > d.threshold)
    r = random_dictionary("relu")
    assert torch.equal(r.gate(pre), pre > 0)
    assert torch.allclose(r.encode(torch.ones(2, 6)), torch.relu(r.pre_activation(torch.ones(2, 6))))


def test_topk_gate_keeps_k_largest_positive_or_signed():
    d = random_dictionary("topk", k=3)
    pre = torch.tensor([[5.0, -1.0, 2.0, -3.0, 0.5, -0.1, 0, 0, 0, 0], [-5.0, -1, -2, -3, 0.5, -0.1, -4, -4, -4, -4]])
    g = d.gate(pre)
    assert g[0].tolist() == [True, False, True, False, True] + [False] * 5
    assert g[1].sum() == 1 and g[1, 4]  # only one positive among the top 3
    s = random_dictionary("topk", k=3, signed=True)
    gs = s.gate(pre)
    assert gs.sum(-1).tolist() == [3, 3]
    assert gs[1, [4, 5, 1]].all()


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("skip", [False, True])
def test_forward_is_decode_of_encode_plus_skip(activation, skip):
    d = random_dictionary(activation, skip=skip)
    x = torch.randn(4, 7, 6)
    pre = d.pre_activation(x)
    assert pre.shape == (4, 7, 10)
    expected = (pre * d.gate(pre)) @ d.W_dec + d.b_dec
    if skip:
        expected = expected + x @ d.W_skip.T
    assert torch.allclose(d(x), expected, atol=1e-6)


def test_from_tensors_names_key_and_shapes():
    cfg = DictionaryConfig(kind="sae", site="attn", layer=1, d_in=4, d_out=4, d_dict=8, activation="jumprelu")
    good = {k: torch.zeros(s) for k, s in cfg.tensor_shapes().items()}
    bad = dict(good, W_dec=torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"'W_dec' in f\.safetensors has shape \[4, 8\]; expected \[8, 4\]"):
        Dictionary.from_tensors(cfg, bad, source="f.safetensors")
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['threshold'\]"):
        Dictionary.from_tensors(cfg, {k: v for k, v in good.items() if k != "threshold"})
    with pytest.raises(ValueError, match="unexpected tensor"):
        Dictionary.from_tensors(cfg, dict(good, W_skip=torch.zeros(4, 4)))


def test_config_validation():
    with pytest.raises(ValueError, match="positive k"):
        DictionaryConfig(kind="sae", site="attn", layer=0, d_in=2, d_out=2, d_dict=4, activation="topk")
    with pytest.raises(ValueError, match="site must be 'mlp'"):
        DictionaryConfig(kind="transcoder", site="attn", layer=0, d_in=2, d_out=2, d_dict=4)
    with pytest.raises(ValueError, match="unknown dictionary config keys"):
        DictionaryConfig.from_dict({"kind": "sae", "site": "attn", "layer": 0, "d_in": 2, "d_out": 2, "d_dict": 4,
                                    "bogus": 1})
    assert DictionaryConfig(kind="sae", site="attn", layer=3, d_in=2, d_out=2, d_dict=4).name == "L3.attn"


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_normalise_decoder_preserves_the_function(activation):
    d = random_dictionary(activation, skip=True)
    x = torch.randn(64, 6)
    before = d(x)
    norms = d.normalise_decoder_()
    assert not torch.allclose(norms, torch.ones_like(norms))
    assert torch.allclose(d.W_dec.norm(dim=-1), torch.ones(10), atol=1e-5)
    assert torch.allclose(d(x), before, atol=1e-5)
    with pytest.raises(ValueError, match="TopK"):
        random_dictionary("topk").normalise_decoder_()


def test_init_weights_unit_decoder_tied_encoder():
    cfg = DictionaryConfig(kind="sae", site="attn", layer=0, d_in=5, d_out=5, d_dict=12, activation="topk", k=2)
    d = Dictionary(cfg).init_weights_(torch.Generator().manual_seed(1))
    assert torch.allclose(d.W_dec.norm(dim=-1), torch.ones(12), atol=1e-6)
    assert torch.equal(d.W_enc, d.W_dec)


def test_content_hash_tracks_weights_and_config():
    a, b = random_dictionary(seed=1), random_dictionary(seed=1)
    assert a.content_hash() == b.content_hash()
    with torch.no_grad():
        b.b_dec[0] += 1e-3
    assert a.content_hash() != b.content_hash()
    s1 = DictionarySet({(0, "mlp"): a})
    s2 = DictionarySet({(0, "mlp"): b})
    assert s1.content_hash() != s2.content_hash()
    with pytest.raises(KeyError, match=r"no dictionary at \(layer, site\) \(1, 'attn'\)"):
        s1[(1, "attn")]
