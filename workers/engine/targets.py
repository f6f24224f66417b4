"""What a graph explains. A target is a linear read-out of one tensor of the frozen forward at one
position: ``value = vector · tensor[pos] + offset`` (the offset is a bias, so it joins the bias leaf).

Kinds: top logits by cumulative probability (circuit-tracer's rule, de-meaned unembedding), single
logits, logit differences (IO − S), arbitrary directions in the residual stream or at the unembedding
input, and feature pre-activations at any position (local circuits).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from workers.engine.linearise import Linearised, Trace
from workers.vocabulary import ids
from workers.vocabulary import tensors as tn


@dataclass
class Target:
    """One row to attribute. ``tensor`` names a readable tensor of the frozen forward (see linearise).

    vector [D]; offset: constant part (biases such as b_enc, lm_head bias); weight: influence weight
    (a logit's probability for top-logit targets, 1 otherwise)."""

    node_id: str
    tensor: str
    pos: int
    vector: torch.Tensor
    offset: float = 0.0
    weight: float = 1.0
    label: str = ""
    token_prob: float | None = None

    def upstream_of(self) -> tuple[int, int]:
        """(layer, site index) bound: sources at sites strictly before it feed this target."""
        return tensor_site_bound(self.tensor)


@functools.lru_cache(maxsize=4096)
def tensor_site_bound(tensor: str) -> tuple[int, int]:
    """Sites (layer, 0=attn / 1=mlp) strictly before the returned pair are upstream of ``tensor``."""
    t = tn.parse_tensor(tensor)
    if t.kind == tn.FINAL:
        return (10**9, 0)
    assert t.layer is not None
    if t.kind == "in":
        # an attn SAE reads the attention output: sites of earlier layers feed it; a transcoder reads the
        # MLP input: the attention site of its own layer feeds it too
        return (t.layer, 0) if t.site == "attn" else (t.layer, 1)
    if t.kind == "resid":
        return (t.layer + 1, 0)
    if t.kind in ("q", "k"):
        return (t.layer, 0)
    raise ValueError(f"{tensor!r} is not a tensor a target can read")


def _unembed(lin: Linearised, token: int) -> tuple[torch.Tensor, float]:
    """Column of the unembedding and the lm_head bias for ``token``."""
    vocab = lin.W_U.shape[0]
    if not 0 <= token < vocab:
        raise ValueError(f"token id {token} is outside the vocabulary (size {vocab})")
    b = 0.0 if lin.lm_bias is None else float(lin.lm_bias[token])
    return lin.W_U[token].detach(), b


def _demeaned(lin: Linearised, token: int) -> tuple[torch.Tensor, float]:
    w, b = _unembed(lin, token)
    w = w - lin.W_U.detach().mean(0)
    if lin.lm_bias is not None:
        b -= float(lin.lm_bias.detach().mean())
    return w, b


def _pos(trace: Trace, pos: int) -> int:
    p = pos if pos >= 0 else trace.n_pos + pos
    if not 0 <= p < trace.n_pos:
        raise ValueError(f"position {pos} is outside the prompt ({trace.n_pos} tokens)")
    return p


def top_logits(
    lin: Linearised, trace: Trace, max_n_logits: int = 10, desired_logit_prob: float = 0.95, pos: int = -1
) -> list[Target]:
    """The most likely next tokens at ``pos`` until their cumulative probability reaches
    ``desired_logit_prob`` (at most ``max_n_logits``), each a de-meaned unembedding direction weighted by
    its probability (circuit-tracer's rule)."""
    p = _pos(trace, pos)
    probs = torch.softmax(trace.logits[p].double(), -1)
    top = probs.topk(min(max_n_logits, probs.numel()))
    cum = top.values.cumsum(0)
    k = int((cum < desired_logit_prob).sum().item()) + 1
    k = min(k, top.values.numel())
    out = []
    for prob, tok in zip(top.values[:k].tolist(), top.indices[:k].tolist(), strict=True):
        vec, off = _demeaned(lin, tok)
        out.append(Target(ids.logit_id(p, tok), tn.FINAL, p, vec, off, weight=prob, label=f"logit t{tok}",
                          token_prob=prob))
    return out


def logit(lin: Linearised, trace: Trace, token: int, pos: int = -1) -> Target:
    p = _pos(trace, pos)
    vec, off = _demeaned(lin, token)
    prob = float(torch.softmax(trace.logits[p].double(), -1)[token])
    return Target(ids.logit_id(p, token), tn.FINAL, p, vec, off, label=f"logit t{token}", token_prob=prob)


def logit_diff(lin: Linearised, trace: Trace, good: int, bad: int, pos: int = -1, name: str | None = None) -> Target:
    """logit(good) − logit(bad) at ``pos``, e.g. IO − S in IOI."""
    p = _pos(trace, pos)
    wg, bg = _unembed(lin, good)
    wb, bb = _unembed(lin, bad)
    name = name or f"diff p{p} t{good}-t{bad}"
    return Target(ids.target_id(name), tn.FINAL, p, wg - wb, bg - bb, label=name)


def direction(
    trace: Trace, vector: torch.Tensor, pos: int = -1, layer: int | None = None, name: str = "direction"
) -> Target:
    """A custom direction ``vector [d_model]`` read from the residual stream after block ``layer`` (or,
    with ``layer=None``, at the unembedding input)."""
    p = _pos(trace, pos)
    tensor = tn.FINAL if layer is None else tn.resid(layer)
    return Target(ids.target_id(name), tensor, p, vector.detach().float(), 0.0, label=name)


def feature(lin: Linearised, trace: Trace, layer: int, site: str, pos: int, index: int) -> Target:
    """The pre-activation of one feature (a local circuit). It need not be active."""
    d = lin.site_dictionary(layer, site)
    if d is None:
        raise ValueError(f"no dictionary at L{layer}.{site}")
    p = _pos(trace, pos)
    if not 0 <= index < d.cfg.d_dict:
        raise ValueError(f"feature {index} out of range: {d.cfg.name} has {d.cfg.d_dict} features")
    return Target(ids.feat_id(layer, site, p, index), tn.site_input(layer, site), p, d.W_enc[index].detach(),
                  float(d.b_enc[index].detach()), label=f"{d.cfg.name} f{index} p{p}")


def parse_target(spec: str, lin: Linearised, trace: Trace, tokenizer=None) -> list[Target]:
    """Target from a CLI string:
    ``top`` (top logits), ``logit:TOKEN[@POS]``, ``diff:GOOD,BAD[@POS]``, ``feat:L2.mlp:p5:f123``.
    TOKEN is an id or, with a tokenizer, a string that encodes to one token."""

    def tok(s: str) -> int:
        if s.lstrip("-").isdigit():
            return int(s)
        if tokenizer is None:
            raise ValueError(f"token {s!r} is not an id and no tokenizer is available")
        t = tokenizer.encode(s, add_special_tokens=False)
        if len(t) != 1:
            raise ValueError(f"{s!r} is {len(t)} tokens; a target token must be exactly one")
        return int(t[0])

    def split_pos(s: str) -> tuple[str, int]:
        if "@" in s:
            a, b = s.rsplit("@", 1)
            return a, int(b)
        return s, -1

    if spec == "top":
        return top_logits(lin, trace)
    if spec.startswith("logit:"):
        s, p = split_pos(spec[6:])
        return [logit(lin, trace, tok(s), p)]
    if spec.startswith("diff:"):
        s, p = split_pos(spec[5:])
        good, bad = s.split(",", 1)
        return [logit_diff(lin, trace, tok(good), tok(bad), p)]
    if spec.startswith("feat:"):
        pid = ids.parse(spec)
        assert pid.layer is not None and pid.site and pid.pos is not None and pid.feature is not None
        return [feature(lin, trace, pid.layer, pid.site, pid.pos, pid.feature)]
    raise ValueError(f"unknown target {spec!r}: use top, logit:TOKEN[@POS], diff:GOOD,BAD[@POS] or feat:L2.mlp:p5:f123")
