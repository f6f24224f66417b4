"""The engine's exactness identities as checks on one graph, shared by the random-model tests
(test_identities.py) and the real model with a trained slice (test_gemma_slice.py)."""

from __future__ import annotations

import torch

from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.graph import Graph
from workers.engine.interventions import frozen_values
from workers.engine.linearise import Linearised, Trace
from workers.engine.targets import Target


def tol(x: torch.Tensor | float) -> float:
    scale = float(x.abs().max()) if isinstance(x, torch.Tensor) else abs(x)
    return 2e-5 * max(scale, 1.0)


def assert_splice_identity(lin: Linearised, prompt: torch.Tensor) -> None:
    """The traced run reproduces the model's logits; the frozen forward on the clean leaves reproduces the
    last hidden state and the logits; a prefix run (causal cone) agrees with the full run on its positions."""
    tr = lin.trace(prompt)
    plain = lin.model(prompt[None]).logits[0]
    # the trace runs attention in eager form, the plain model maybe with SDPA: rounding scales with the logits
    # (Gemma 3 270M: 2.3e-5 at logits of 29)
    assert (tr.logits - plain).abs().max() < tol(plain)
    run = lin.frozen_forward(tr, require_grad=False)
    final = run.tensors["final"][0]
    assert (final - tr.final).abs().max() < tol(tr.final)
    logits = lin.model.get_output_embeddings()(final)
    cap = getattr(lin.model.config, "final_logit_softcapping", None)
    if cap:  # Gemma: logits are soft-capped after the unembedding; graphs attribute them pre-cap
        logits = cap * torch.tanh(logits / cap)
    assert (logits - plain).abs().max() < tol(plain)
    short = lin.frozen_forward(tr, 5, require_grad=False).tensors["final"][0]
    assert (short - final[:5]).abs().max() < tol(final)


def assert_rows_complete(g: Graph, min_rows: int = 0) -> None:
    """Every row (feature pre-activation or target) equals the sum of its incoming edges, including the
    bias, error and embedding leaves; active features' rows are their activations."""
    A = g.dense()
    rows = ~torch.isnan(g.value)
    assert rows.sum() > min_rows
    err = (A.sum(1)[rows] - g.value[rows]).abs().max()
    assert err < tol(g.value[rows]), err
    feats = g.nodes_of_kind("feat")
    active = feats[g.activation[feats] > 0]
    assert torch.allclose(g.value[active], g.activation[active], atol=tol(g.activation))


def assert_frozen_ablation_matches_edges(lin: Linearised, tr: Trace, tg: list[Target], g: Graph,
                                         pick: list[int]) -> None:
    """Setting each picked source node to zero in the frozen model changes every target by minus its edge;
    setting the first to twice its value adds its edge once more."""
    base = frozen_values(lin, tr, tg, [{}])[0]
    after = frozen_values(lin, tr, tg, [{g.node_ids[i]: 0.0} for i in pick])
    A = g.dense()
    rows = torch.tensor([g.index(t.node_id) for t in tg])
    expected = -A[rows][:, pick].T  # [n_pick, n_targets]
    assert expected.abs().max() > 1e-3
    assert (after - base - expected).abs().max() < tol(base)
    i = pick[0]
    twice = frozen_values(lin, tr, tg, [{g.node_ids[i]: 2 * float(g.activation[i])}])[0]
    assert (twice - base - A[rows, i]).abs().max() < tol(base)


def assert_adjoint_matches_autograd(lin: Linearised, tr: Trace, tg: list[Target]) -> Graph:
    """The explicit adjoint (default backward) gives the edges vmap-batched autograd gives, on the same
    sparsity pattern; returns the adjoint's graph."""
    from workers.engine.adjoint import AdjointModel

    assert AdjointModel.build(lin, tr) is not None
    a = build_graph(lin, tr, tg, AttributionSettings(cone_chunk=5, batch_size=9))
    b = build_graph(lin, tr, tg, AttributionSettings(backward="vmap", cone_chunk=4))
    assert a.node_ids == b.node_ids
    assert torch.equal(a.adjacency.crow_indices(), b.adjacency.crow_indices())
    assert torch.equal(a.adjacency.col_indices(), b.adjacency.col_indices())
    va, vb = a.adjacency.values(), b.adjacency.values()
    assert (va - vb).abs().max() < 1e-5 * max(1.0, float(vb.abs().max()))
    return a
