"""Devices and dtypes (ATLAS_DEVICE, ATLAS_DTYPE): the names parse, a missing GPU is a clear error, and bf16
weights give graphs within a stated tolerance of fp32 whose rows are still complete to bf16 round-off.

CPU only (CI has no GPU); bench/gpu_check.sh runs the engine's identities on CUDA.

Tolerances (measured on these models, 3 prompts each: README "Devices and dtype"): between bf16 and fp32,
relative L2 error of the edges among nodes both graphs have ≤ 2e-2 (measured ≤ 1.0e-2) and of the logits
≤ 2e-2 (≤ 1.3e-2); completeness in bf16, |Σ_s A[t, s] − value[t]| ≤ 3e-2 · max(1, Σ_s |A[t, s]|)
(≤ 1.8e-2: the value is the bf16 clean run's, the edges are fp32 products over bf16 weights and frozen values).
"""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from tests.engine.conftest import PROMPTS, make_dicts, make_gpt2
from workers.engine.adjoint import AdjointModel
from workers.engine.attribution import attribute
from workers.engine.graph import Graph
from workers.engine.linearise import Linearised
from workers.models.placement import Placement
from workers.settings import Settings

EDGE_TOL = 2e-2
LOGIT_TOL = 2e-2
COMPLETENESS_TOL = 3e-2


def test_settings_parse_device_and_dtype(monkeypatch):
    monkeypatch.setenv("ATLAS_DEVICE", " CUDA:1 ")
    monkeypatch.setenv("ATLAS_DTYPE", "BF16")
    s = Settings()
    assert (s.device, s.dtype) == ("cuda:1", "bf16")
    assert Placement.from_settings(s) == Placement("cuda:1", "bf16")
    monkeypatch.delenv("ATLAS_DEVICE")
    monkeypatch.delenv("ATLAS_DTYPE")
    assert (Settings().device, Settings().dtype) == ("cpu", "fp32")
    for field, bad in (("device", "tpu"), ("device", "cpu:0"), ("device", "cuda:x"), ("dtype", "fp16")):
        with pytest.raises(ValidationError, match="is not one of"):
            Settings(**{field: bad})
    assert Placement("cpu", "bf16").torch_dtype() is torch.bfloat16
    assert Placement().torch_device() == torch.device("cpu")


def test_cuda_requested_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():  # a GPU machine: cuda works, an index past the last one does not
        assert Placement("cuda").torch_device().type == "cuda"
        with pytest.raises(RuntimeError, match="CUDA device"):
            Placement(f"cuda:{torch.cuda.device_count()}").torch_device()
        return
    with pytest.raises(RuntimeError, match="sees no CUDA device.*ATLAS_DEVICE=cpu"):
        Placement("cuda:0").torch_device()
    model = make_gpt2(1, 32)
    dicts = make_dicts(model, 1, 32, sites=("mlp",))
    lin = Linearised(model, dicts)
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        lin.place(Placement("cuda"))
    assert lin.device.type == "cpu"  # nothing moved


def _common(a: Graph, b: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacency of a and b restricted to the nodes both have (bf16 flips a few features near threshold)."""
    ib = {n: i for i, n in enumerate(b.node_ids)}
    common = [(i, ib[n]) for i, n in enumerate(a.node_ids) if n in ib]
    xa, xb = torch.tensor([c[0] for c in common]), torch.tensor([c[1] for c in common])
    return a.adjacency.to_dense()[xa][:, xa], b.adjacency.to_dense()[xb][:, xb]


def test_bf16_is_within_tolerance_of_fp32_and_complete(lin):
    lb = Linearised(copy.deepcopy(lin.model), copy.deepcopy(lin.dictionaries)).place(Placement("cpu", "bf16"))
    assert lb.dtype is torch.bfloat16 and lin.dtype is torch.float32
    assert lb.content_hash() == lin.content_hash()  # provenance names the weights as loaded
    assert lb.dictionary_hash() == lin.dictionary_hash()
    for prompt in PROMPTS:
        a, b = attribute(lin, prompt), attribute(lb, prompt)
        assert b.provenance["weights_dtype"] == "bfloat16" and b.provenance["device"] == "cpu"
        # the explicit adjoint's self-check accepts the bf16 model (no silent fall-back to autograd)
        assert AdjointModel.build(lb, lb.trace(prompt)) is not None
        Ac, Bc = _common(a, b)
        assert Ac.shape[0] >= 0.97 * a.n_nodes
        assert float((Ac - Bc).norm() / Ac.norm()) <= EDGE_TOL
        la, lbf = lin.trace(prompt).logits, lb.trace(prompt).logits.float()
        assert float((la - lbf).norm() / la.norm()) <= LOGIT_TOL
        B = b.adjacency.to_dense()
        rows = ~torch.isnan(b.value)
        residual = (B.sum(1)[rows] - b.value[rows]).abs()
        assert bool((residual <= COMPLETENESS_TOL * B.abs().sum(1)[rows].clamp_min(1.0)).all()), float(residual.max())
        # and fp32 stays exact (the tolerance above is bf16's, not the engine's)
        A = a.adjacency.to_dense()
        ra = ~torch.isnan(a.value)
        assert float((A.sum(1)[ra] - a.value[ra]).abs().max()) <= 1e-4 * max(1.0, float(a.value[ra].abs().max()))


def test_worker_model_cache_loads_on_its_placement(tmp_path):
    """The workers' ModelCache loads model and dictionaries on its placement (process_model_cache passes
    ATLAS_DEVICE / ATLAS_DTYPE); the default (the API's and analyses' caches) stays on the CPU in fp32."""
    from workers.dictionaries.formats import save_dictionary_set
    from workers.pipeline import registry
    from workers.pipeline.compute import ModelCache

    model = make_gpt2(1, 32)
    dicts = make_dicts(model, 1, 32, sites=("mlp",))
    model.save_pretrained(tmp_path / "model")
    save_dictionary_set(dicts, tmp_path / "dicts")
    m = registry.RegisteredModel("m", str(tmp_path / "model"), "hf", registry.content_hash(tmp_path / "model"), None, 0.0)
    d = registry.RegisteredDictionarySet("d", str(tmp_path / "dicts"), "native", registry.content_hash(tmp_path / "dicts"),
                                         "m", 1, 0.0)
    bf16 = ModelCache(placement=Placement("cpu", "bf16")).get(m, d).lin
    assert bf16.dtype is torch.bfloat16 and bf16.dictionaries[(0, "mlp")].W_dec.dtype is torch.bfloat16
    default = ModelCache().get(m, d).lin
    assert default.dtype is torch.float32 and default.device.type == "cpu"
    assert bf16.content_hash() == default.content_hash()
    g = attribute(bf16, PROMPTS[0][:6])
    assert g.provenance["weights_dtype"] == "bfloat16"
