"""Hierarchical attribution (Ge et al. 2024): one gated backward pass per target.

In the frozen model with features *live* (a = pre-activation, gates frozen), the gradient reaching each
active feature v is its total effect g_v on the target through the features already kept. The feature
passes gradient upstream only if its attribution ``a_v·g_v`` clears τ (|a·g| > τ by default; the
authors' signed rule ``a·g > τ`` optional); otherwise it is a pruned frontier node. The circuit is
built top-down without materialising the graph, and is exactly complete for every τ:

    t = Σ leaves reached through kept nodes (embeddings, errors, biases) + Σ pruned frontier a_v·g_v

With τ → −∞ every node passes and the leaf attributions are the ungated total attributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from workers.engine.linearise import Linearised, Trace
from workers.engine.targets import Target
from workers.vocabulary import ids
from workers.vocabulary import tensors as tn


@dataclass
class HierarchicalResult:
    target: str
    value: float  # the target's value in the frozen forward
    tau: float  # the absolute threshold used
    kept: dict[str, float] = field(default_factory=dict)  # features that passed: their a·g
    frontier: dict[str, float] = field(default_factory=dict)  # features reached that did not pass: a·g
    leaves: dict[str, float] = field(default_factory=dict)  # emb/pos/err/bias reached: their contribution

    def cut_total(self) -> float:
        """Σ leaves + Σ frontier; equals ``value`` (cut completeness)."""
        return math.fsum(self.leaves.values()) + math.fsum(self.frontier.values())


class _GateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: torch.Tensor, gate: _Gate, key: tuple[int, str]) -> torch.Tensor:
        ctx.save_for_backward(pre)
        ctx.gate, ctx.key = gate, key
        return pre.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (pre,) = ctx.saved_tensors
        attr = pre * g  # a·g: active features have a = pre
        score = attr.abs() if ctx.gate.sign == "abs" else attr
        passed = score > ctx.gate.tau
        ctx.gate.records[ctx.key] = (attr.detach(), passed)
        return g * passed, None, None


class _Gate:
    def __init__(self, tau: float, sign: str) -> None:
        self.tau, self.sign = tau, sign
        self.records: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, key: tuple[int, str], pre: torch.Tensor) -> torch.Tensor:
        return _GateFn.apply(pre, self, key)


def bias_parameters(lin: Linearised) -> list[tuple[str, torch.Tensor]]:
    """Every bias of the model and the dictionaries (named ``…bias``, ``b_enc``, ``b_dec``)."""
    out = [(n, p) for n, p in lin.model.named_parameters() if n.endswith("bias")]
    for (layer, site), d in lin.dictionaries:
        out += [(f"{tn.site_name(layer, site)}.dict.b_enc", d.b_enc), (f"{tn.site_name(layer, site)}.dict.b_dec", d.b_dec)]
    if lin.clt is not None:
        out += [("clt.b_enc", lin.clt.b_enc), ("clt.b_dec", lin.clt.b_dec)]
    return out


def hierarchical(
    lin: Linearised,
    trace: Trace,
    target: Target,
    tau: float = 0.1,
    relative: bool = False,
    sign: Literal["abs", "signed"] = "abs",
) -> HierarchicalResult:
    """Gated backward pass from ``target``. ``relative``: τ is a fraction of |target value|."""
    gate = _Gate(tau, sign)
    P = target.pos + 1
    run = lin.frozen_forward(trace, P, gate=gate)
    x = run.tensors[target.tensor][0, target.pos]
    value_t = x @ target.vector.to(x.dtype) + target.offset
    value = float(value_t)
    gate.tau = tau * abs(value) if relative else tau
    names = list(run.leaves_out)
    biases = bias_parameters(lin)
    inputs = [run.leaves_out[k] for k in names] + [p for _, p in biases]
    grads = torch.autograd.grad(value_t, inputs, allow_unused=True)
    res = HierarchicalResult(target=target.node_id, value=value, tau=gate.tau)
    for name, g in zip(names, grads[: len(names)], strict=True):
        if g is None:
            continue
        g = g[0]
        if name in ("emb", "pos"):
            clean = trace.emb if name == "emb" else trace.pos_emb
            assert clean is not None
            contrib = (g * clean[:P]).sum(-1)
            make = ids.emb_id if name == "emb" else ids.pos_id
            for p in range(P):
                res.leaves[make(p)] = float(contrib[p])
        else:
            leaf = tn.parse_tensor(name)  # a site's output leaf, delta:L{l}.{site}
            assert leaf.layer is not None and leaf.site is not None
            contrib = (g * trace.sites[(leaf.layer, leaf.site)].err[:P]).sum(-1)
            for p in range(P):
                res.leaves[ids.err_id(leaf.layer, leaf.site, p)] = float(contrib[p])
    bias_total = target.offset
    for (_, p), g in zip(biases, grads[len(names):], strict=True):
        if g is not None:
            bias_total += float((p.detach().double() * g.double()).sum())
    res.leaves[ids.bias_id("all")] = bias_total
    for key, (attr, passed) in gate.records.items():
        rec = trace.sites[key]
        m = rec.pos_idx < P
        pi, fi = rec.pos_idx[m].tolist(), rec.feat_idx[m].tolist()
        for j, (p, f) in enumerate(zip(pi, fi, strict=True)):
            a = float(attr[0, j])
            nid = ids.feat_id(key[0], key[1], p, f)
            if bool(passed[0, j]):
                res.kept[nid] = a
            elif a != 0.0:
                res.frontier[nid] = a
    return res
