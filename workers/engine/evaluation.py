"""Ground-truth checks of attributions on tasks whose answer has a known source position.

For a target (the answer's logit, or IO − S for IOI), the total attributions of the leaves (one ungated
backward pass: hierarchical attribution with τ = −∞) are grouped by token position; the check passes
when, among positions other than the last, the one with the largest positive share is a source
position of the answer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from workers.engine import targets as T
from workers.engine.hierarchical import hierarchical
from workers.engine.linearise import Linearised
from workers.vocabulary import ids


@dataclass
class PositionShares:
    shares: dict[int, float]  # position -> Σ total attributions of the leaves at that position
    best: int  # argmax over positions other than the last (−1 if none is positive)
    value: float  # the target's value
    bias: float  # the bias leaf (no position)


def position_shares(lin: Linearised, input_ids: torch.Tensor, target: T.Target) -> PositionShares:
    trace = lin.trace(input_ids, fold_first=True)
    h = hierarchical(lin, trace, target, tau=-math.inf)
    shares: dict[int, float] = defaultdict(float)
    bias = 0.0
    for node, v in h.leaves.items():
        p = ids.parse(node)
        if p.kind == "bias":
            bias += v
        else:
            assert p.pos is not None
            shares[p.pos] += v
    last = int(input_ids.numel()) - 1
    cands = {p: s for p, s in shares.items() if p != last and s > 0}
    best = max(cands, key=cands.__getitem__) if cands else -1
    return PositionShares(dict(shares), best, h.value, bias)


def example_target(lin: Linearised, input_ids: torch.Tensor, answer_id: int, s_name_id: int | None) -> T.Target:
    """The answer's logit at the last position, or the logit difference answer − S (IOI)."""
    trace = lin.trace(input_ids, fold_first=True)
    if s_name_id is not None:
        return T.logit_diff(lin, trace, answer_id, s_name_id)
    return T.logit(lin, trace, answer_id)
