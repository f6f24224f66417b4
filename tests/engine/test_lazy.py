"""Lazily loaded dictionaries (``load_dictionary_set(lazy=True)``, workers/dictionaries/formats/lazy.py): matrices are
file mappings, graphs equal the eagerly loaded set's bit for bit, and the engine reads decoder rows of active
features only (the others are NaN in the file and nothing turns NaN). The identity tests run on a lazily loaded
set too (conftest's ``gpt2+lazy``)."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import PROMPTS, calibrate, make_clt_dicts, make_dicts, make_gpt2
from workers.dictionaries.crosslayer.module import CLTDictionarySet, SourceLayer, clt_of
from workers.dictionaries.formats import (
    load_dictionary_set,
    save_dictionary_set,
    write_circuit_tracer,
    write_circuit_tracer_clt,
)
from workers.dictionaries.formats.lazy import is_mapped
from workers.dictionaries.modules import DictionarySet
from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.linearise import Linearised, decode_active
from workers.engine.targets import top_logits

N_LAYER, D = 3, 64


@pytest.fixture(scope="module")
def model_and_dir(tmp_path_factory):
    """A GPT-2 and, written in several layouts: its per-layer dictionaries (``native``), their transcoders in
    circuit-tracer's layout (``ct``), a CLT with attention SAEs (``clt``) and that CLT alone in circuit-tracer's
    layout (``clt_ct``)."""
    model = make_gpt2(N_LAYER, D)
    lin = Linearised(model, make_dicts(model, N_LAYER, D, d_dict=256))
    calibrate(lin, PROMPTS[0])
    out = tmp_path_factory.mktemp("dicts")
    save_dictionary_set(lin.dictionaries, out / "native")
    # circuit-tracer's layout holds transcoders only: a set of the MLP transcoders
    write_circuit_tracer(DictionarySet({k: d for k, d in lin.dictionaries if k[1] == "mlp"}), out / "ct")
    clt = Linearised(model, make_clt_dicts(N_LAYER, D, d_dict=256))
    calibrate(clt, PROMPTS[0])
    save_dictionary_set(clt.dictionaries, out / "clt")
    write_circuit_tracer_clt(CLTDictionarySet({}, clt=clt.dictionaries.clt), out / "clt_ct")  # type: ignore[attr-defined]
    return model, out


LAYOUTS = ["native", "ct", "clt", "clt_ct"]


def _decoders(ds) -> list[torch.Tensor]:
    clt = clt_of(ds)
    return [d.W_dec for _, d in ds] + ([] if clt is None else list(clt.W_dec))


def _graph(lin, prompt, budget=None):
    tr = lin.trace(prompt)
    return build_graph(lin, tr, top_logits(lin, tr, max_n_logits=3),
                       AttributionSettings(batch_size=8, cone_chunk=4, max_feature_nodes=budget))


def _same(g, h) -> None:
    assert g.node_ids == h.node_ids
    a, b = g.adjacency, h.adjacency
    assert torch.equal(a.crow_indices(), b.crow_indices()) and torch.equal(a.col_indices(), b.col_indices())
    assert torch.equal(a.values(), b.values())
    torch.testing.assert_close(g.value, h.value, rtol=0, atol=0, equal_nan=True)  # NaN: nodes without a row


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lazy_matrices_are_file_mappings_with_the_same_values(model_and_dir, layout):
    model, out = model_and_dir
    eager, lazy = load_dictionary_set(out / layout), load_dictionary_set(out / layout, lazy=True)
    assert sorted(k for k, _ in eager) == sorted(k for k, _ in lazy)
    for (key, d), (_, e) in zip(lazy, eager, strict=True):
        names = ["W_enc", "W_dec"] + (["W_skip"] if d.W_skip is not None else [])
        assert all(is_mapped(getattr(d, n)) for n in names), key
        assert not any(is_mapped(getattr(e, n)) for n in names), key
        assert d.cfg == e.cfg
        for n, t in e.tensors().items():
            assert torch.equal(getattr(d, n).detach(), t), (key, n)
    assert all(is_mapped(W) for W in _decoders(lazy)) and not any(is_mapped(W) for W in _decoders(eager))
    c_lazy, c_eager = clt_of(lazy), clt_of(eager)
    assert (c_lazy is None) == (c_eager is None) == (layout not in ("clt", "clt_ct"))
    if c_lazy is not None:
        assert c_lazy.cfg == c_eager.cfg
        for i in range(c_lazy.n_layers):
            for n, t in c_eager.layer_tensors(i).items():
                assert torch.equal(c_lazy.layer_tensors(i)[n], t), (i, n)
    assert lazy.content_hash() == eager.content_hash()


@pytest.mark.parametrize("budget", [None, 12])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lazy_and_eager_graphs_are_equal(model_and_dir, layout, budget):
    model, out = model_and_dir
    eager = Linearised(model, load_dictionary_set(out / layout))
    lazy = Linearised(model, load_dictionary_set(out / layout, lazy=True))
    for prompt in PROMPTS[:2]:
        g, h = _graph(eager, prompt, budget), _graph(lazy, prompt, budget)
        assert g.n_nodes > 3 * len(prompt)  # features, not only errors and tokens
        _same(g, h)


@pytest.mark.parametrize("layout", ["native", "clt"])
def test_the_engine_reads_decoder_rows_of_active_features_only(model_and_dir, tmp_path, layout):
    """Rows of features inactive on the prompt are NaN in the files: a dense ``acts @ W_dec`` anywhere (trace,
    injections, read-out operands, live splice; a CLT's writes to later layers) would turn the graph or the logits
    NaN (0 · NaN = NaN)."""
    model, out = model_and_dir
    prompt = PROMPTS[0]
    eager = Linearised(model, load_dictionary_set(out / layout))
    tr = eager.trace(prompt)
    poisoned = load_dictionary_set(out / layout)
    lin_p = Linearised(model, poisoned)  # its site dictionaries: a CLT's source layers too
    n_poisoned = 0
    with torch.no_grad():
        for key in tr.sites:
            d = lin_p.site_dictionary(*key)
            if d is None:
                continue
            inactive = torch.ones(d.cfg.d_dict, dtype=torch.bool)
            inactive[tr.sites[key].feat_idx] = False
            W = clt_of(poisoned).W_dec[key[0]] if isinstance(d, SourceLayer) else d.W_dec  # type: ignore[union-attr]
            W[inactive] = float("nan")
            n_poisoned += int(inactive.sum())
    assert n_poisoned > 0
    save_dictionary_set(poisoned, tmp_path / "poisoned")
    lazy = Linearised(model, load_dictionary_set(tmp_path / "poisoned", lazy=True))
    for budget in (None, 12):
        _same(_graph(eager, prompt, budget), _graph(lazy, prompt, budget))
    logits = lazy.live_forward(prompt)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, tr.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_active_equals_the_dense_decode(model_and_dir, dtype):
    model, out = model_and_dir
    d = load_dictionary_set(out / "native", lazy=True)[(1, "mlp")]
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(2, 7, d.cfg.d_dict, generator=gen) * (torch.rand(2, 7, d.cfg.d_dict, generator=gen) < 0.05)
    dense = acts.double() @ d.W_dec.detach().double() + d.b_dec.detach().double()
    if dtype == torch.float32:
        got = decode_active(d, acts)
        assert got.dtype == torch.float32 and got.shape == (2, 7, D)
        assert torch.allclose(got.double(), dense, atol=1e-5, rtol=1e-5)
    else:
        d.to(dtype)  # a copy of the mapped tensors in bf16 (what place() does)
        got = decode_active(d, acts.to(dtype))
        assert got.dtype == dtype
        assert (got.double() - dense).abs().max() <= 2e-2 * dense.abs().max()
