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


def module_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The tensor a module was called with (first positional argument, or `hidden_states`, or the first tensor)."""
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
            x = y if key[1] == "attn" else module_input(args, kwargs).detach()
            store[key] = (x, y)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def iter_activations(
    model: nn.Module,
    token_batches: Iterable[torch.Tensor],
    sites: Iterable[Site],
    drop_positions: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, dict[Site, tuple[torch.Tensor, torch.Tensor]]]]:
    """Per token batch ([batch, pos] ids), one forward pass (stopped after the last needed block) and
    (tokens kept, {site: (X, Y)}) with X, Y float32 [tokens kept, d] on ``device``. ``drop_positions`` skips the
    first positions of every sequence (e.g. 1 for a BOS whose activations are outliers)."""
    sites = list(sites)
    last_block = blocks(model)[max(layer for layer, _ in sites)].module
    model_device = next(model.parameters()).device

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
                    model(input_ids=tokens.to(model_device))
                except _StopForward:
                    pass
                out = {}
                for s in sites:
                    x, y = store[s]
                    out[s] = (x[:, drop_positions:].reshape(-1, x.shape[-1]).float().to(device),
                              y[:, drop_positions:].reshape(-1, y.shape[-1]).float().to(device))
                yield tokens[:, drop_positions:].numel(), out
    finally:
        stopper.remove()


def collect_activations(
    model: nn.Module,
    token_batches: Iterable[torch.Tensor],
    sites: Iterable[Site],
    max_tokens: int | None = None,
    drop_positions: int = 0,
    progress: bool = False,
) -> dict[Site, tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model`` over ``token_batches`` ([batch, pos] token ids) and return per site (X, Y) as float32
    [n_tokens, d_in] / [n_tokens, d_out] on the CPU. ``drop_positions`` skips the first positions of every
    sequence (e.g. 1 for a BOS whose activations are outliers); ``max_tokens`` stops early."""
    sites = list(sites)
    xs: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    ys: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    n = 0
    bar = tqdm(total=max_tokens, desc="activations", unit="tok", disable=not progress)
    batches = iter_activations(model, token_batches, sites, drop_positions=drop_positions)
    try:
        for got, acts in batches:
            for s in sites:
                xs[s].append(acts[s][0])
                ys[s].append(acts[s][1])
            n += got
            bar.update(got)
            if max_tokens is not None and n >= max_tokens:
                break
    finally:
        batches.close()  # removes the hooks now, not when the generator is collected
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
