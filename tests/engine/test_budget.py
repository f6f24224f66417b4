"""The node budget (``max_feature_nodes``): rows stay complete under every budget, unexpanded features
live on as one leaf per (site, position) whose frozen ablation equals its edge, a budget covering every
active feature gives the unbudgeted graph, and the selection follows circuit-tracer's rule, independent of
the batch size. GPT-2, Llama and Gemma 3 (conftest's ``lin`` fixture)."""

from __future__ import annotations

import torch

from tests.engine.conftest import PROMPTS
from tests.engine.test_identities import _targets, _tol
from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.graph import Graph
from workers.engine.interventions import frozen_values, unexpanded_features
from workers.engine.pruning import influence, prune
from workers.vocabulary import ids


def _budgeted(lin, tr, tg, budget: int, batch_size: int = 16, expand_batch: int = 16) -> Graph:
    return build_graph(lin, tr, tg, AttributionSettings(batch_size=batch_size, cone_chunk=4,
                                                        max_feature_nodes=budget, expand_batch=expand_batch))


def _n_active(tr) -> int:
    return sum(rec.n_active for rec in tr.sites.values() if rec.dictionary is not None)


def test_rows_complete_and_features_accounted_for_under_every_budget(lin):
    tr = lin.trace(PROMPTS[0])
    tg = _targets(lin, tr)
    n_active = _n_active(tr)
    for budget in (0, 7, 50, 200):
        g = _budgeted(lin, tr, tg, budget)
        A = g.dense()
        rows = ~torch.isnan(g.value)
        err = (A.sum(1)[rows] - g.value[rows]).abs().max()
        assert err < _tol(g.value[rows]), (budget, err)
        feats = [i for i in g.nodes_of_kind("feat").tolist() if g.activation[i] > 0]
        # active features that are targets are rows from the start and count against the budget
        n_feature_targets = sum(1 for t in tg if t.node_id in g and g.kinds[g.index(t.node_id)] == "feat"
                                and g.activation[g.index(t.node_id)] > 0)
        assert len(feats) == min(n_active, max(budget, n_feature_targets))
        assert all(rows[i] for i in feats)  # every feature node is expanded (a row)
        leaves = g.nodes_of_kind("unexp").tolist()
        assert (len(leaves) > 0) == (len(feats) < n_active)
        held = [unexpanded_features(g, tr, g.node_ids[i]) for i in leaves]
        assert all(len(h) > 0 for h in held)  # a leaf only where some feature was left out
        assert len(feats) + sum(len(h) for h in held) == n_active  # no active feature vanished
        for i in leaves:
            assert g.activation[i] == 1.0 and torch.isnan(g.value[i])
        if leaves:  # they feed the rows downstream of them (those at late positions may feed none)
            assert A[:, leaves].abs().sum() > 0


def test_budget_covering_every_feature_gives_the_unbudgeted_graph(lin):
    tr = lin.trace(PROMPTS[2])
    tg = _targets(lin, tr)
    full = build_graph(lin, tr, tg, AttributionSettings(batch_size=16, cone_chunk=4))
    g = _budgeted(lin, tr, tg, _n_active(tr) + 5, expand_batch=64)
    assert g.node_ids == full.node_ids and not g.nodes_of_kind("unexp").numel()
    A, B = g.dense(), full.dense()
    assert (A - B).abs().max() < 1e-6 * max(1.0, float(B.abs().max()))
    assert torch.allclose(g.value, full.value, equal_nan=True, atol=_tol(full.value.nan_to_num()))


def test_selection_is_deterministic_and_independent_of_batch_size(lin):
    tr = lin.trace(PROMPTS[2])
    tg = _targets(lin, tr)
    a = _budgeted(lin, tr, tg, 60, batch_size=64, expand_batch=16)
    b = _budgeted(lin, tr, tg[::-1], 60, batch_size=3, expand_batch=16)
    c = _budgeted(lin, tr, tg, 60, batch_size=64, expand_batch=16)
    assert a.node_ids == c.node_ids and torch.equal(a.dense(), c.dense())  # deterministic, bit for bit
    assert set(a.node_ids) == set(b.node_ids)
    perm = torch.tensor([b.index(n) for n in a.node_ids])
    A, B = a.dense(), b.dense()[perm][:, perm]
    assert (A - B).abs().max() < 1e-6 * max(1.0, float(A.abs().max()))


def test_selection_follows_influence_on_the_targets(lin):
    """Ground truth from the unbudgeted graph: the first batch is the top features by one-step influence
    Σ_t w_t Â[t, s] of the target rows; the second the top of the rest by the partial influence through the
    target rows and the first batch's rows (circuit-tracer's compute_partial_influences)."""
    tr = lin.trace(PROMPTS[0])
    tg = _targets(lin, tr)
    full = build_graph(lin, tr, tg, AttributionSettings(batch_size=16, cone_chunk=4))
    coo = full.adjacency.to_sparse_coo().coalesce()
    idx, val = coo.indices(), coo.values()
    not_bias = torch.tensor([k != "bias" for k in full.kinds])[idx[1]]
    idx, val = idx[:, not_bias], val[not_bias]
    n = full.n_nodes
    w = torch.zeros(n, dtype=torch.float64)
    for t in tg:
        w[full.index(t.node_id)] = t.weight
    target_rows = {full.index(t.node_id) for t in tg}
    active = torch.tensor([k == "feat" and float(a) > 0 for k, a in zip(full.kinds, full.activation, strict=True)])
    active &= ~torch.isin(torch.arange(n), torch.tensor(sorted(target_rows)))

    def top(rows: set[int], k: int, exclude: set[int]) -> set[int]:
        m = torch.isin(idx[0], torch.tensor(sorted(rows)))
        ii, vv = idx[:, m], val[m]
        rowsum = torch.zeros(n, dtype=torch.float64).index_add_(0, ii[0], vv.abs().double())
        score = influence(ii, vv.abs().double() / rowsum[ii[0]], w)
        cand = [i for i in active.nonzero().flatten().tolist() if i not in exclude]
        order = sorted(cand, key=lambda i: (-float(score[i]), i))
        return {full.node_ids[i] for i in order[:k]}

    k = 12
    first = top(target_rows, k, set())
    g1 = _budgeted(lin, tr, tg, k, expand_batch=k)
    got1 = {nid for i, nid in enumerate(g1.node_ids) if g1.kinds[i] == "feat" and nid not in {t.node_id for t in tg}}
    assert got1 == first
    first_idx = {full.index(nid) for nid in first}
    second = top(target_rows | first_idx, k, first_idx)
    g2 = _budgeted(lin, tr, tg, 2 * k, expand_batch=k)
    got2 = {nid for i, nid in enumerate(g2.node_ids) if g2.kinds[i] == "feat" and nid not in {t.node_id for t in tg}}
    assert got2 == first | second


def test_frozen_ablation_of_an_unexpanded_leaf_equals_its_edge(lin):
    tr = lin.trace(PROMPTS[1])
    tg = _targets(lin, tr)
    g = _budgeted(lin, tr, tg, 10)
    leaves = g.nodes_of_kind("unexp").tolist()
    pick = leaves[-4:] + leaves[:2]
    base = frozen_values(lin, tr, tg, [{}])[0]
    after = frozen_values(lin, tr, tg, [{g.node_ids[i]: 0.0} for i in pick], graph=g)
    A = g.dense()
    rows = torch.tensor([g.index(t.node_id) for t in tg])
    expected = -A[rows][:, pick].T
    assert expected.abs().max() > 1e-3
    assert (after - base - expected).abs().max() < _tol(base)
    # and the leaf equals the sum of the edges the unbudgeted graph gives its features
    full = build_graph(lin, tr, tg, AttributionSettings(batch_size=16, cone_chunk=4))
    F = full.dense()
    for i in pick:
        members = [full.index(fid) for fid, _ in unexpanded_features(g, tr, g.node_ids[i])]
        for t in tg:
            want = F[full.index(t.node_id), members].sum()
            assert abs(float(A[g.index(t.node_id), i]) - float(want)) < _tol(want)


def test_pruning_scores_and_export_of_a_budgeted_graph(lin, tmp_path):
    tr = lin.trace(PROMPTS[0])
    tg = _targets(lin, tr)
    g = _budgeted(lin, tr, tg, 30)
    r = prune(g)
    for key in ("replacement_unpruned", "completeness_unpruned", "unexpanded_unpruned", "replacement_pruned"):
        assert 0.0 <= r.scores[key] <= 1.0
    assert r.scores["unexpanded_unpruned"] > 0  # most features are unexpanded at this budget
    full = prune(build_graph(lin, tr, tg, AttributionSettings(batch_size=16, cone_chunk=4)))
    assert full.scores["unexpanded_unpruned"] == 0.0
    g.save(tmp_path / "g")
    h = Graph.load(tmp_path / "g")
    assert h.kinds == g.kinds and torch.equal(h.dense(), g.dense())
    assert h.provenance["budget"]["max_feature_nodes"] == 30
    np_json = g.to_neuronpedia()
    leaf = next(n for n in np_json["nodes"] if n["node_id"].startswith("unexp:"))
    assert ids.parse(leaf["node_id"]).kind == "unexp" and leaf["clerp"].startswith("unexpanded features")


def test_budget_memory_pieces(lin):
    """Under a budget the read-out's operands are built per batch (nodes.DecoderOperand) and rows are held as
    values only, their columns rebuilt (ReadOut.columns_of): the operand's slots are each active feature's
    a_s W_dec[s] and the error, computed here independently from the trace; provenance carries the memory terms."""
    from workers.engine.nodes import DecoderOperand, lay_out

    tr = lin.trace(PROMPTS[2])
    settings = AttributionSettings(max_feature_nodes=10, operand_memory_gb=0.0)  # always built per batch
    held = lay_out(lin, tr, _targets(lin, tr), AttributionSettings(max_feature_nodes=10))
    assert all(isinstance(sc.vectors, torch.Tensor) for sc in held.site_cols)  # small: held
    layout = lay_out(lin, tr, _targets(lin, tr), settings)
    for sc in layout.site_cols:
        assert isinstance(sc.vectors, DecoderOperand)
        rec = tr.sites[sc.key]
        full = sc.vectors[:tr.n_pos]
        d_out = rec.err.shape[-1]  # a CLT source layer's slots are wider: its writes side by side, error first
        assert torch.equal(full[:, 0, :d_out], rec.err.float()) and bool((full[:, 0, d_out:] == 0).all())
        P = 5
        assert torch.equal(sc.vectors[:P], full[:P])
        for j in range(rec.n_active):
            p, f, a = int(rec.pos_idx[j]), int(rec.feat_idx[j]), rec.acts[j]
            k = int((sc.feat_cols[p] == layout.index[ids.feat_id(sc.key[0], sc.key[1], p, f)]).nonzero())
            assert torch.allclose(full[p, 1 + k], a * rec.dictionary.W_dec[f].detach(), atol=1e-6)
        empty = sc.feat_cols < 0
        assert bool((full[:, 1:][empty] == 0).all())
    g = build_graph(lin, tr, _targets(lin, tr), settings)
    h = build_graph(lin, tr, _targets(lin, tr), AttributionSettings(max_feature_nodes=10))
    assert g.node_ids == h.node_ids and torch.equal(g.adjacency.values(), h.adjacency.values())  # bit-identical
    mem = g.provenance["budget"]["memory_bytes"]
    assert mem["rows_held"] == 4 * g.provenance["budget"]["held_entries"] > 0
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    patterns = sum(r.pattern.numel() * r.pattern.element_size() for r in tr.attn.values())
    site_tensors = sum(t.numel() * t.element_size() for r in tr.sites.values() for t in (r.x, r.out, r.err))
    assert mem["trace"] == tr.nbytes() >= patterns + site_tensors > 0
