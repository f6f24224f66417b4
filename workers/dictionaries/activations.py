"""Activations at dictionary sites of any Hugging Face causal LM, captured with forward hooks.

Per site, the pair a dictionary is trained on:
  - ``attn``: x = y = the attention module's output (first element of its return value)   [n, d_model]
  - ``mlp``:  x = the MLP module's input (already normalised by the pre-MLP norm), y = its output
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from workers.models.sites import blocks, site_module

Site = tuple[int, str]


class _StopForward(Exception):
    """Raised by a hook once the last needed block has run, so the rest of the model (and the
    unembedding, the biggest matmul of a real model) is skipped."""


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value,index]


def _module_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


@contextmanager
def capture_sites(model: nn.Module, sites: Iterable[Site]) -> Iterator[dict[Site, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every forward pass stores {site: (x, y)} ([batch, pos, d]) in the yielded dict."""
    store: dict[Site, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for layer, site in sites:
        mod = site_module(model, layer, site)

        def hook(_m, args, kwargs, out, key=(layer, site)):
            y = _first(out).detach()
            x = y if key[1] == "attn" else _module_input(args, kwargs).detach()
            store[key] = (x, y)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    token_batches: Iterable[torch.Tensor],
    sites: Iterable[Site],
    max_tokens: int | None = None,
    drop_positions: int = 0,
    progress: bool = False,
) -> dict[Site, tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model`` over ``token_batches`` ([batch, pos] token ids) and return per site (X, Y) as float32
    [n_tokens, d_in] / [n_tokens, d_out]. ``drop_positions`` skips the first positions of every sequence
    (e.g. 1 for a BOS whose activations are outliers); ``max_tokens`` stops early."""
    sites = list(sites)
    xs: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    ys: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    n = 0
    bar = tqdm(total=max_tokens, desc="activations", unit="tok", disable=not progress)
    last_block = blocks(model)[max(layer for layer, _ in sites)].module

    def stop(*_):
        raise _StopForward

    stopper = last_block.register_forward_hook(stop)
    try:
        with capture_sites(model, sites) as store:
            for tokens in token_batches:
                tokens = torch.as_tensor(tokens)
                if tokens.ndim == 1:
                    tokens = tokens[None]
                try:
                    model(input_ids=tokens.to(next(model.parameters()).device))
                except _StopForward:
                    pass
                for s in sites:
                    x, y = store[s]
                    xs[s].append(x[:, drop_positions:].reshape(-1, x.shape[-1]).float().cpu())
                    ys[s].append(y[:, drop_positions:].reshape(-1, y.shape[-1]).float().cpu())
                got = tokens[:, drop_positions:].numel()
                n += got
                bar.update(got)
                if max_tokens is not None and n >= max_tokens:
                    break
    finally:
        stopper.remove()
    bar.close()
    if n == 0:
        raise ValueError("token_batches was empty: no activations collected")
    out = {}
    for s in sites:
        X, Y = torch.cat(xs[s]), torch.cat(ys[s])
        if max_tokens is not None:
            X, Y = X[:max_tokens], Y[:max_tokens]
        out[s] = (X, Y)
    return out
