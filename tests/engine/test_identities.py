"""Exactness identities of the linearised graph, on random GPT-2 and Llama models (see conftest)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine.conftest import PROMPTS
from tests.engine.identities import (
    assert_adjoint_matches_autograd,
    assert_frozen_ablation_matches_edges,
    assert_rows_complete,
    assert_splice_identity,
)
from tests.engine.identities import tol as _tol
from workers.engine import targets as T
from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.graph import Graph
from workers.engine.hierarchical import hierarchical
from workers.engine.interventions import frozen_values, live_values
from workers.vocabulary import ids


def _targets(lin, tr):
    direction = torch.randn(lin.d_model, generator=torch.Generator().manual_seed(3))
    return T.top_logits(lin, tr) + [
        T.logit_diff(lin, tr, 3, 4, pos=-2),
        T.direction(tr, direction, pos=3, layer=1, name="resid direction"),
        T.feature(lin, tr, 2, "mlp", 4, 7),
    ]


@pytest.fixture(scope="module")
def graphs(lin):
    out = []
    for prompt in PROMPTS:
        tr = lin.trace(prompt)
        tg = _targets(lin, tr)
        out.append((tr, tg, build_graph(lin, tr, tg, AttributionSettings(batch_size=16, cone_chunk=4))))
    return out


def test_splice_identity(lin):
    for prompt in PROMPTS:
        assert_splice_identity(lin, prompt)


def test_completeness_every_row(graphs):
    """Every row (feature pre-activation or target) equals the sum of its incoming edges, including the
    bias, error and embedding leaves."""
    for _, _, g in graphs:
        assert_rows_complete(g, min_rows=50)


def test_structure(graphs, lin):
    """No edge goes backwards in position or layer; only active features appear; ids are unique."""
    for tr, _, g in graphs:
        assert len(set(g.node_ids)) == g.n_nodes
        coo = g.adjacency.to_sparse_coo().coalesce()
        r, c = coo.indices()
        src_kind = [g.kinds[i] for i in c.tolist()]
        for t, s, k in zip(r.tolist(), c.tolist(), src_kind, strict=True):
            if k == "bias":
                continue
            assert g.pos[s] <= g.pos[t]
            if k in ("feat", "err") and g.kinds[t] == "feat":
                ts = (int(g.layer[t]), 0 if g.site[t] == "attn" else 1)
                ss = (int(g.layer[s]), 0 if g.site[s] == "attn" else 1)
                # an attn SAE reads the attention output (fed by earlier layers); a transcoder reads the
                # MLP input (fed also by its own layer's attention)
                assert ss < ts if g.site[t] == "mlp" else ss[0] < ts[0]
        for key, rec in tr.sites.items():
            if rec.dictionary is None:
                continue
            pre = rec.dictionary.pre_activation(rec.x)
            gate = rec.dictionary.gate(pre)
            for i in g.nodes_of_kind("feat").tolist():
                if (int(g.layer[i]), g.site[i]) == key and g.activation[i] > 0:
                    assert gate[g.pos[i], g.feature[i]]
            n_nodes = sum(1 for i in g.nodes_of_kind("feat").tolist()
                          if (int(g.layer[i]), g.site[i]) == key and g.activation[i] > 0)
            assert n_nodes == int(gate.sum())


def test_frozen_ablation_matches_edges(graphs, lin):
    gen = torch.Generator().manual_seed(0)
    for tr, tg, g in graphs[:2]:
        feats = g.nodes_of_kind("feat")
        feats = feats[g.activation[feats] > 0]
        pick = feats[torch.randperm(len(feats), generator=gen)[:6]].tolist()
        pick += g.nodes_of_kind("err")[-3:].tolist() + g.nodes_of_kind("emb")[:2].tolist()
        assert_frozen_ablation_matches_edges(lin, tr, tg, g, pick)


def _total_from_direct(g: Graph, t: int) -> torch.Tensor:
    """Total attributions to row t from the direct-edge matrix: x = D[t,F] (I − D[F,F])⁻¹ with
    D = ∂(row)/∂(feature activation) = A / a; features get x·a, leaves A[t,ℓ] + x·A[F,ℓ]."""
    A = g.dense().double()
    F = g.nodes_of_kind("feat")
    F = F[g.activation[F] > 0]
    a = g.activation[F].double()
    D_FF = A[F][:, F] / a[None, :]
    d_t = A[t, F] / a
    x = torch.linalg.solve((torch.eye(len(F), dtype=torch.float64) - D_FF).T, d_t)
    total = A[t].clone()
    total += x @ A[F]
    total[F] = x * a
    return total


def test_direct_vs_total_and_hierarchical(graphs, lin):
    for tr, tg, g in graphs:
        for tgt in tg[:1] + tg[-2:]:
            t = g.index(tgt.node_id)
            total = _total_from_direct(g, t)
            leaves = [i for i, k in enumerate(g.kinds) if k in ("emb", "pos", "err", "bias")]
            # target = Σ total attributions of the leaves
            assert abs(float(total[leaves].sum()) - float(g.value[t])) < _tol(g.value[t])
            h = hierarchical(lin, tr, tgt, tau=-math.inf)
            assert not h.frontier
            for node, v in h.leaves.items():
                assert abs(v - float(total[g.index(node)])) < _tol(total), node
            for node, v in h.kept.items():
                assert abs(v - float(total[g.index(node)])) < _tol(total), node


@pytest.mark.parametrize("sign", ["abs", "signed"])
def test_hierarchical_cut_completeness(lin, sign):
    for prompt in PROMPTS:
        tr = lin.trace(prompt)
        for tgt in _targets(lin, tr)[:1] + _targets(lin, tr)[-1:]:
            sizes = []
            for tau in (0.0, 0.01, 0.1, 0.5):
                h = hierarchical(lin, tr, tgt, tau=tau, sign=sign)
                assert abs(h.cut_total() - h.value) < _tol(h.value)
                sizes.append(len(h.kept))
            assert sizes == sorted(sizes, reverse=True)  # larger τ keeps fewer nodes
            h = hierarchical(lin, tr, tgt, tau=0.05, relative=True)
            assert abs(h.cut_total() - h.value) < _tol(h.value)
            assert all(abs(v) > 0.05 * abs(h.value) for v in h.kept.values())


def test_invariance_to_batch_size_and_target_order(lin):
    tr = lin.trace(PROMPTS[2])
    tg = _targets(lin, tr)
    g1 = build_graph(lin, tr, tg, AttributionSettings(batch_size=64, cone_chunk=4))
    g2 = build_graph(lin, tr, tg[::-1], AttributionSettings(batch_size=3, cone_chunk=4))
    perm = torch.tensor([g2.index(n) for n in g1.node_ids])
    A1, A2 = g1.dense(), g2.dense()[perm][:, perm]
    assert (A1 != 0).sum() == (A2 != 0).sum()
    assert (A1 - A2).abs().max() < 1e-6 * max(1.0, float(A1.abs().max()))
    # the same batch size with the targets reversed gives bit-identical edges
    g3 = build_graph(lin, tr, tg[::-1], AttributionSettings(batch_size=64, cone_chunk=4))
    perm3 = torch.tensor([g3.index(n) for n in g1.node_ids])
    assert torch.equal(A1, g3.dense()[perm3][:, perm3])


def test_vmap_and_replicated_backward_agree(lin):
    tr = lin.trace(PROMPTS[0])
    tg = _targets(lin, tr)
    a = build_graph(lin, tr, tg, AttributionSettings(backward="vmap", cone_chunk=3)).dense()
    b = build_graph(lin, tr, tg, AttributionSettings(backward="replicate", batch_size=7)).dense()
    assert (a - b).abs().max() < 1e-6 * max(1.0, float(a.abs().max()))


def _attn_feature_target(lin, tr):
    """A target reading an attention SAE's input (the attention output) at the last position."""
    rec = tr.sites[(1, "attn")]
    return T.feature(lin, tr, 1, "attn", tr.n_pos - 1, int(rec.feat_idx[0]) if rec.n_active else 0)


def test_adjoint_matches_autograd(lin):
    """The explicit adjoint (default backward) gives the edges autograd gives, on every row kind: logits,
    logit differences, residual directions, MLP and attention-SAE features (with the fixtures' skip
    transcoders: the position-diagonal skip term). GPT-2, Llama and Gemma 3 (post-norms, QK-norm, scaled
    embeddings) all use the adjoint."""
    tr = lin.trace(PROMPTS[2])
    tg = _targets(lin, tr) + [_attn_feature_target(lin, tr)]
    a = assert_adjoint_matches_autograd(lin, tr, tg)
    assert_rows_complete(a)  # on the adjoint's graph, targets of every kind included


def test_adjoint_self_check_rejects_a_wrong_transpose(lin):
    """The numerical self-check (what makes an unrecognised architecture fall back to autograd) fails when
    one layer's transpose is wrong."""
    from workers.engine.adjoint import AdjointModel

    tr = lin.trace(PROMPTS[0])
    adj = AdjointModel.build(lin, tr)
    assert adj is not None and adj._agrees_with_autograd()
    op = adj.layers[0]  # layer 0's maps 1% off (the fixtures' attention SAEs cut the residual path there)
    for name in ("Wv", "Wo_res", "M_res", "M_out", "mlp_skip"):
        if getattr(op, name) is not None:
            setattr(op, name, getattr(op, name) * 1.01)
    assert not adj._agrees_with_autograd()
    if op.post_mlp is not None:  # Gemma: a wrong post-norm alone is caught too
        adj = AdjointModel.build(lin, tr)
        assert adj is not None
        pm = adj.layers[1].post_mlp
        pm.F, pm.diag = pm.F * 1.01, None if pm.diag is None else pm.diag * 1.01
        assert not adj._agrees_with_autograd()


def test_adjoint_without_skip_and_with_cut_attention():
    """Transcoders without skip and attention SAEs without skip (the attention path is cut), on GPT-2,
    Llama and Gemma 3: adjoint edges equal autograd's, and rows are complete."""
    from tests.engine.conftest import calibrate, make_dicts, make_gemma3, make_gpt2, make_llama
    from workers.engine.adjoint import AdjointModel
    from workers.engine.linearise import Linearised

    for make in (make_gpt2, make_llama, make_gemma3):
        model = make(3, 64)
        lin2 = Linearised(model, make_dicts(model, 3, 64, skip=False, sites=("mlp",)))
        lin2.dictionaries.dictionaries[(1, "attn")] = make_dicts(model, 3, 64, skip=False, sites=("attn",),
                                                                 seed=5).dictionaries[(1, "attn")]
        calibrate(lin2, PROMPTS[0])
        tr = lin2.trace(PROMPTS[0])
        assert AdjointModel.build(lin2, tr) is not None
        tg = _targets(lin2, tr) + [_attn_feature_target(lin2, tr)]
        a = build_graph(lin2, tr, tg)
        b = build_graph(lin2, tr, tg, AttributionSettings(backward="vmap"))
        va, vb = a.adjacency.values(), b.adjacency.values()
        assert torch.equal(a.adjacency.col_indices(), b.adjacency.col_indices())
        assert (va - vb).abs().max() < 1e-5 * max(1.0, float(vb.abs().max()))
        rows = ~torch.isnan(a.value)
        assert (a.dense().sum(1)[rows] - a.value[rows]).abs().max() < _tol(a.value[rows])


def test_grouped_bias_sums_to_total(lin):
    tr = lin.trace(PROMPTS[1])
    tg = _targets(lin, tr)
    g1 = build_graph(lin, tr, tg)
    g2 = build_graph(lin, tr, tg, AttributionSettings(bias="grouped"))
    b1 = g1.dense()[:, g1.index("bias:all")]
    cols = g2.nodes_of_kind("bias")
    assert len(cols) > 3
    rows = torch.tensor([g2.index(n) for n in g1.node_ids if not n.startswith("bias:")])
    b1 = b1[[i for i, n in enumerate(g1.node_ids) if not n.startswith("bias:")]]
    b2 = g2.dense()[rows][:, cols].sum(1)
    assert (b1 - b2).abs().max() < _tol(b1)


def test_live_intervention_runs_and_matches_clean(lin):
    tr = lin.trace(PROMPTS[0])
    tg = T.top_logits(lin, tr)
    frozen = frozen_values(lin, tr, tg, [{}])[0]
    live = live_values(lin, tr, tg, [{}])[0]
    assert (frozen - live).abs().max() < _tol(frozen)
    rec = tr.sites[(0, "mlp")]
    j = int(rec.acts.argmax())  # the strongest feature: a weak one's effect can round away in fp32
    node = ids.feat_id(0, "mlp", int(rec.pos_idx[j]), int(rec.feat_idx[j]))
    ablated = live_values(lin, tr, tg, [{node: 0.0}])[0]
    assert not torch.equal(ablated, live)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("input_site", ["resid_mid", "mlp_in"])
def test_clt_reads_its_input_site(arch, input_site):
    """A CLT reading ``resid_mid`` reads the residual before the pre-MLP norm: with no norm between the
    attention's output and that residual (GPT-2, Llama), the edge from layer ℓ's attention error node at
    position p to a feature f of source layer ℓ at p is exactly ``err · W_enc[f]``. One reading the MLP
    input sees that error through the frozen norm (``s · P(γ ⊙ W_enc[f])``): the same formula is then off."""
    from tests.engine.conftest import MAKERS, calibrate, make_clt_dicts
    from workers.engine.linearise import Linearised

    lin = Linearised(MAKERS[arch](3, 64), make_clt_dicts(3, 64, input_site=input_site))
    calibrate(lin, PROMPTS[0])
    assert lin.reads_resid_mid == (input_site == "resid_mid")
    tr = lin.trace(PROMPTS[0])
    g = build_graph(lin, tr, T.top_logits(lin, tr))
    A = g.dense()
    checked, worst, scale = 0, 0.0, 0.0
    for layer in range(1, 3):
        rec, err = tr.sites[(layer, "mlp")], tr.sites[(layer, "attn")].err
        W_enc = rec.dictionary.W_enc.detach()
        for p, f in zip(rec.pos_idx.tolist(), rec.feat_idx.tolist(), strict=True):
            edge = A[g.index(ids.feat_id(layer, "mlp", p, f)), g.index(ids.err_id(layer, "attn", p))]
            expected = err[p] @ W_enc[f]
            worst, scale = max(worst, abs(float(edge - expected))), max(scale, abs(float(expected)))
            checked += 1
    assert checked > 20 and scale > 0.1
    if input_site == "resid_mid":
        assert worst < _tol(scale), worst
    else:
        assert worst > 0.1 * scale


def test_save_load_roundtrip_and_neuronpedia(graphs, tmp_path):
    _, _, g = graphs[0]
    g.save(tmp_path / "g")
    h = Graph.load(tmp_path / "g")
    assert h.node_ids == g.node_ids and h.kinds == g.kinds
    assert torch.equal(h.dense(), g.dense())
    assert torch.equal(h.value.nan_to_num(7.0), g.value.nan_to_num(7.0))
    assert not any(p.suffix in (".pt", ".pkl") for p in (tmp_path / "g").iterdir())
    np_json = g.to_neuronpedia()
    assert np_json["metadata"]["schema_version"] == 1
    node_ids = [n["node_id"] for n in np_json["nodes"]]
    assert len(node_ids) == len(set(node_ids)) == g.n_nodes
    assert len(np_json["links"]) == g.adjacency.values().numel()
    assert {n["feature_type"] for n in np_json["nodes"]} >= {"embedding", "logit", "cross layer transcoder"}
    # a feature (a CLT's too: one node whatever layers it writes to) sits at the layer whose input it reads
    feats = {n["node_id"]: n for n in np_json["nodes"] if n["feature_type"] == "cross layer transcoder"}
    assert len(feats) == g.kinds.count("feat")
    for i, k in enumerate(g.kinds):
        if k == "feat":
            assert feats[g.node_ids[i]]["layer"] == str(int(g.layer[i])) == g.node_ids[i].split(":L")[1].split(".")[0]
