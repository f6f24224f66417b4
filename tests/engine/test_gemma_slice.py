"""The engine's identities on the real Gemma 3 270M with a trained slice of dictionaries spliced in (issue #16):
attention SAEs and transcoders on three layers at 512 features, trained by the suite itself on a slice of the
real-text corpus and cached (workers/dictionaries/gemma/slice.py; a cold build takes a few CPU minutes). The
checks are the ones the random models pass (tests/engine/identities.py): the splice identity, completeness of
every row, frozen ablation = edges, explicit adjoint = autograd."""

from __future__ import annotations

import json

import pytest
import torch

from tests.engine.identities import (
    assert_adjoint_matches_autograd,
    assert_frozen_ablation_matches_edges,
    assert_rows_complete,
    assert_splice_identity,
)
from workers.engine import targets as T
from workers.engine.attribution import build_graph

pytestmark = pytest.mark.slow

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def slice_lin(gemma):  # noqa: ANN001, ANN201
    from workers.dictionaries.formats import load_dictionary_set
    from workers.dictionaries.gemma.slice import GemmaSliceSpec, ensure_gemma_slice
    from workers.engine.linearise import Linearised

    model, tok = gemma
    spec = GemmaSliceSpec()
    path = ensure_gemma_slice(spec, model=model, tokenizer=tok)
    return Linearised(model, load_dictionary_set(path, model)), tok, spec, path


@pytest.fixture(scope="module")
def prompt_graph(slice_lin):  # noqa: ANN001, ANN201
    """The IOI prompt's trace (BOS folded), targets of every kind, and the default graph."""
    lin, tok, spec, _ = slice_lin
    ids = tok(PROMPT, return_tensors="pt").input_ids[0]
    tr = lin.trace(ids, fold_first=True)
    mary, john = (tok.encode(" " + n, add_special_tokens=False)[0] for n in ("Mary", "John"))
    last = spec.layers[-1]
    mlp, attn = tr.sites[(last, "mlp")], tr.sites[(spec.layers[1], "attn")]
    tg = T.top_logits(lin, tr) + [
        T.logit_diff(lin, tr, mary, john),
        T.direction(tr, torch.randn(lin.d_model, generator=torch.Generator().manual_seed(3)), pos=5, layer=last,
                    name="resid direction"),
        T.feature(lin, tr, last, "mlp", int(mlp.pos_idx[-1]), int(mlp.feat_idx[-1])),
        T.feature(lin, tr, spec.layers[1], "attn", tr.n_pos - 1, int(attn.feat_idx[-1])),
    ]
    return tr, tg, build_graph(lin, tr, tg)


def test_the_slice_is_what_its_spec_says(slice_lin) -> None:  # noqa: ANN001
    lin, _, spec, path = slice_lin
    assert sorted(k for k, _ in lin.dictionaries) == sorted((layer, s) for layer in spec.layers for s in spec.sites)
    report = json.loads((path / "report.json").read_text())
    for (layer, site), d in lin.dictionaries:
        assert d.cfg.d_in == d.cfg.d_out == 640 and d.cfg.d_dict == spec.d_dict and d.cfg.k == spec.k
        r = report["dictionaries"][f"L{layer}.{site}"]
        assert r["l0"] <= spec.k and r["explained_variance"] > 0.5, (layer, site, r)
    assert report["cross_entropy"]["clean"] > 0 and report["cross_entropy"]["all"]["ce"] > 0


def test_splice_identity(slice_lin) -> None:  # noqa: ANN001
    lin, tok, _, _ = slice_lin
    assert_splice_identity(lin, tok(PROMPT, return_tensors="pt").input_ids[0])


def test_every_row_is_complete(prompt_graph, slice_lin) -> None:  # noqa: ANN001
    _, _, spec, _ = slice_lin
    _, _, g = prompt_graph
    feats = g.nodes_of_kind("feat")
    assert len(feats) >= len(spec.layers) * len(spec.sites) * spec.k  # every active feature is a row
    assert_rows_complete(g, min_rows=len(feats))


def test_frozen_ablation_matches_edges(prompt_graph, slice_lin) -> None:  # noqa: ANN001
    lin = slice_lin[0]
    tr, tg, g = prompt_graph
    feats = g.nodes_of_kind("feat")
    feats = feats[g.activation[feats] > 0]
    pick = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:6]].tolist()
    pick += g.nodes_of_kind("err")[-3:].tolist() + g.nodes_of_kind("emb")[2:4].tolist()
    assert_frozen_ablation_matches_edges(lin, tr, tg, g, pick)


def test_adjoint_matches_autograd(prompt_graph, slice_lin) -> None:  # noqa: ANN001
    lin = slice_lin[0]
    tr, tg, _ = prompt_graph
    assert_adjoint_matches_autograd(lin, tr, tg)
