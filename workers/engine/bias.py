"""Bias leaves: everything the frozen model adds that is not a leaf (DESIGN.md §2).

The frozen model is affine in its leaves (embeddings, errors, features), so the forward with every leaf
zero is exactly the bias term; it is linear in its biases too, so that term splits into parameter groups
(``bias="grouped"``). Also the reading of many targets' values from one run (``read_rows``).
"""

from __future__ import annotations

import re

import torch

from workers.engine.linearise import Linearised, Trace
from workers.engine.targets import Target
from workers.vocabulary.tensors import site_name


def bias_groups(lin: Linearised) -> dict[str, list[torch.Tensor]]:
    """Bias parameters grouped as ``L{layer}.{module}`` (model) / ``L{layer}.{site}.dict`` (dictionaries) /
    ``{module}`` outside the blocks. A parameter is a bias if its name ends in ``bias`` or is b_enc/b_dec."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in lin.model.named_parameters():
        if not name.endswith("bias"):
            continue
        m = re.search(r"\.(?:h|layers)\.(\d+)\.([^.]+)", name)
        g = f"L{m.group(1)}.{m.group(2)}" if m else name.rsplit(".", 2)[-2]
        groups.setdefault(g, []).append(p)
    for (layer, site), d in lin.dictionaries:
        groups.setdefault(f"{site_name(layer, site)}.dict", []).extend([d.b_enc, d.b_dec])
    if lin.clt is not None:  # a CLT's encoder bias of source layer ℓ and decoder bias of output layer ℓ
        for layer in range(lin.clt.n_layers):
            groups.setdefault(f"{site_name(layer, 'mlp')}.dict", []).extend([lin.clt.b_enc[layer], lin.clt.b_dec[layer]])
    return groups


def read_rows(run, rows: list[Target]) -> torch.Tensor:
    """Values of many targets in one run, vectorised per tensor: [B, len(rows)]."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(rows):
        groups.setdefault(t.tensor, []).append(i)
    B = next(iter(run.tensors.values())).shape[0]
    out = torch.zeros(B, len(rows), dtype=torch.float32)
    for name, members in groups.items():
        X = run.tensors[name]
        pos = torch.tensor([rows[i].pos for i in members])
        vec = torch.stack([rows[i].vector for i in members]).to(X.dtype)
        off = torch.tensor([rows[i].offset for i in members], dtype=torch.float64)
        val = (X[:, pos] * vec[None]).sum(-1).double() + off
        out[:, members] = val.float()
    return out


@torch.no_grad()
def bias_contributions(lin: Linearised, trace: Trace, rows: list[Target], grouped: bool) -> dict[str, torch.Tensor]:
    """Per bias leaf, its contribution to each row [R]: the frozen forward with every embedding, error and
    feature leaf zero is exactly the bias term (the frozen model is affine in its leaves). Grouped: the
    same with all biases outside one group zeroed too (the model is linear in its biases as well)."""

    def once() -> torch.Tensor:
        run = lin.frozen_forward(trace, leaves="zero", require_grad=False)
        return read_rows(run, rows)[0] if rows else torch.zeros(0)

    if not grouped:
        return {"all": once()}
    groups = bias_groups(lin)
    saved = {id(p): p.detach().clone() for ps in groups.values() for p in ps}
    offsets = {t.node_id: t.offset for t in rows}
    out: dict[str, torch.Tensor] = {}
    try:
        for p in (p for ps in groups.values() for p in ps):
            p.zero_()
        for t in rows:  # target offsets (b_enc of the target, lm_head bias) belong to their own group
            t.offset = 0.0
        for g, ps in groups.items():
            for p in ps:
                p.copy_(saved[id(p)])
            out[g] = once()
            for p in ps:
                p.zero_()
        out["readout"] = torch.tensor([offsets[t.node_id] for t in rows], dtype=torch.float32)
    finally:
        for ps in groups.values():
            for p in ps:
                p.copy_(saved[id(p)])
        for t in rows:
            t.offset = offsets[t.node_id]
    return out

