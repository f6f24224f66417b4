"""How good a dictionary is: L0, explained variance, dead fraction (on held-out activations), and the
cross-entropy cost of splicing dictionaries into the model.

Splice = replace the site's output by the dictionary's reconstruction (an SAE reconstructs the
attention output from itself; a transcoder computes the MLP output from the MLP input).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.dictionaries.activations import module_input
from workers.dictionaries.modules import Dictionary, DictionarySet
from workers.models.sites import site_module


@dataclass(frozen=True)
class ReconstructionStats:
    l0: float  # mean number of active features per token
    explained_variance: float  # 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²
    dead_fraction: float  # fraction of features never active on these tokens
    mse: float  # mean squared error per element
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


class StatsAccumulator:
    """:func:`reconstruction_stats` fed batch by batch, so the held-out activations of many sites need not be held
    at once: memory is one batch. Σ‖y − ȳ‖² is accumulated as Σ‖y‖² − ‖Σy‖²/n in float64."""

    def __init__(self, d: Dictionary) -> None:
        self.d = d
        self.n = 0
        self.sse = self.sq = self.l0_sum = 0.0
        self.y_sum = torch.zeros(d.cfg.d_out, dtype=torch.float64)
        self.fired = torch.zeros(d.cfg.d_dict, dtype=torch.bool)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Rows x [n, d_in] with their targets y [n, d_out], on the dictionary's device."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of rows; got {x.shape[0]} and {y.shape[0]}")
        d = self.d
        pre = d.pre_activation(x)
        g = d.gate(pre)
        y_hat = d.decode(pre * g)
        skip = d.skip_out(x)
        if skip is not None:
            y_hat = y_hat + skip
        self.sse += float(((y - y_hat) ** 2).sum(dtype=torch.float64))
        self.sq += float((y ** 2).sum(dtype=torch.float64))
        self.y_sum += y.sum(0, dtype=torch.float64).cpu()
        self.l0_sum += float(g.sum(dtype=torch.float64))
        self.fired |= g.any(0).cpu()
        self.n += x.shape[0]

    def result(self) -> ReconstructionStats:
        if self.n == 0:
            raise ValueError("no rows were added")
        n = self.n
        tot = self.sq - float((self.y_sum ** 2).sum()) / n
        return ReconstructionStats(l0=self.l0_sum / n, explained_variance=1.0 - self.sse / max(tot, 1e-30),
                                   dead_fraction=float((~self.fired).float().mean()),
                                   mse=self.sse / (n * self.d.cfg.d_out), n_tokens=n)


def reconstruction_stats(d: Dictionary, X: torch.Tensor, Y: torch.Tensor, batch: int = 8192) -> ReconstructionStats:
    """Stats of ``d`` on inputs X [n, d_in] and targets Y [n, d_out]."""
    if X.shape[0] != Y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"X and Y must hold the same positive number of rows; got {X.shape[0]} and {Y.shape[0]}")
    acc = StatsAccumulator(d)
    for i in range(0, X.shape[0], batch):
        acc.add(X[i:i + batch], Y[i:i + batch])
    return acc.result()


@contextmanager
def spliced(model: nn.Module, ds: DictionarySet, sites: Iterable[tuple[int, str]] | None = None) -> Iterator[None]:
    """Within the block, the chosen sites (default: all of ``ds``) output their dictionary's reconstruction."""
    keys = list(sites) if sites is not None else [k for k, _ in ds]
    handles = []
    for key in keys:
        d = ds[key]
        mod = site_module(model, *key)

        def hook(_m, args, kwargs, out, d=d, site=key[1]):
            y = out[0] if isinstance(out, tuple) else out
            x = y if site == "attn" else module_input(args, kwargs)
            y_hat = d(x.to(d.W_enc.dtype)).to(y.dtype)
            return (y_hat, *out[1:]) if isinstance(out, tuple) else y_hat

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def cross_entropy(model: nn.Module, token_batches: Iterable[torch.Tensor]) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions of all batches ([batch, pos])."""
    total, count = 0.0, 0
    for tokens in token_batches:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None]
        logits = model(input_ids=tokens).logits[:, :-1].float()
        target = tokens[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
        count += target.numel()
    if count == 0:
        raise ValueError("no tokens to score: token_batches was empty or had sequences of length 1")
    return total / count


@torch.no_grad()
def splice_ce(model: nn.Module, ds: DictionarySet, token_batches: list[torch.Tensor],
              per_site: bool = True) -> dict:
    """Clean CE, CE with every site of ``ds`` spliced at once, and (``per_site``) with each site alone.

    Returns {"clean": float, "all": {"ce", "increase", "relative_increase"}, "sites": {"L0.attn": {...}}}.
    """
    clean = cross_entropy(model, token_batches)

    def entry(ce: float) -> dict:
        return {"ce": ce, "increase": ce - clean, "relative_increase": (ce - clean) / clean}

    with spliced(model, ds):
        out: dict = {"clean": clean, "all": entry(cross_entropy(model, token_batches))}
    if per_site:
        out["sites"] = {}
        for key, d in ds:
            with spliced(model, ds, [key]):
                out["sites"][d.cfg.name] = entry(cross_entropy(model, token_batches))
    return out
