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


@torch.no_grad()
def reconstruction_stats(d: Dictionary, X: torch.Tensor, Y: torch.Tensor, batch: int = 8192) -> ReconstructionStats:
    """Stats of ``d`` on inputs X [n, d_in] and targets Y [n, d_out]."""
    if X.shape[0] != Y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"X and Y must hold the same positive number of rows; got {X.shape[0]} and {Y.shape[0]}")
    mean = Y.mean(0)
    sse = tot = 0.0
    l0_sum = 0.0
    fired = torch.zeros(d.cfg.d_dict, dtype=torch.bool)
    for i in range(0, X.shape[0], batch):
        x, y = X[i:i + batch], Y[i:i + batch]
        pre = d.pre_activation(x)
        g = d.gate(pre)
        y_hat = d.decode(pre * g)
        skip = d.skip_out(x)
        if skip is not None:
            y_hat = y_hat + skip
        sse += float(((y - y_hat) ** 2).sum())
        tot += float(((y - mean) ** 2).sum())
        l0_sum += float(g.sum())
        fired |= g.any(0)
    n = X.shape[0]
    return ReconstructionStats(l0=l0_sum / n, explained_variance=1.0 - sse / max(tot, 1e-30),
                               dead_fraction=float((~fired).float().mean()), mse=sse / (n * Y.shape[1]), n_tokens=n)


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
