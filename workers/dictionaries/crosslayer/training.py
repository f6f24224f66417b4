"""Training a cross-layer transcoder, and its quality metrics, with the per-layer recipe of
``workers.dictionaries.training`` carried over (``TrainConfig``, reports, AuxK, resampling):

  - per layer, inputs and targets are scaled to mean norm √d for training and the scales folded back;
  - TopK per source layer and position (k = ``TrainConfig.k``), so the L0 per layer matches a per-layer
    transcoder trained with the same k;
  - initialisation as a per-layer transcoder: each feature's decoder starts at a random centred data point
    of its own layer's output and writes nothing to later layers; the cross-layer writes are learnt;
  - each feature's whole decoder (all the layers it writes to) is kept at unit norm after every step;
  - loss = mean over output layers of the normalised MSE Σ‖y_m − ŷ_m‖²/Σ‖y_m − ȳ_m‖²; AuxK per source
    layer (its top dead latents explain the residual of the layers they write to); dead features are
    resampled at badly reconstructed tokens in the first ``resample_until`` of training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workers.dictionaries.activations import module_input
from workers.dictionaries.crosslayer.module import CLTConfig, CrossLayerTranscoder
from workers.dictionaries.formats.hooks import pre_mlp_norm_module
from workers.dictionaries.training import TrainConfig, TrainHistory, decay_lr_
from workers.models.sites import blocks


def _decode(clt: CrossLayerTranscoder, layer: int, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Σ_j vals[:, j]·W_dec[layer][idx[:, j]] -> [n, L − layer, d_model], without dense activations."""
    W = clt.W_dec[layer]
    out = F.embedding_bag(idx, W.reshape(W.shape[0], -1), per_sample_weights=vals, mode="sum")
    return out.view(-1, W.shape[1], W.shape[2])


def train_clt(X: list[torch.Tensor], Y: list[torch.Tensor], tcfg: TrainConfig, input_site: str = "mlp_in",
              name: str = "clt", extra: dict | None = None, progress: bool = True
              ) -> tuple[CrossLayerTranscoder, TrainHistory]:
    """Train a TopK CLT on per-layer inputs ``X[l]`` [n, d_model] (read at ``input_site``) and MLP outputs
    ``Y[l]`` [n, d_model], all layers on the same n tokens. Returns it (scales folded back) and its history;
    the history's L0 is the mean over source layers (per position and layer, as a per-layer transcoder's)."""
    if tcfg.activation != "topk":
        raise ValueError(f"CLT training supports activation 'topk', not {tcfg.activation!r}")
    L = len(X)
    if L == 0 or len(Y) != L or any(x.shape != X[0].shape or y.shape != X[0].shape for x, y in zip(X, Y, strict=True)):
        raise ValueError("train_clt needs inputs and outputs of every layer, all [n, d_model] on the same tokens; got "
                         f"X {[list(x.shape) for x in X]}, Y {[list(y.shape) for y in Y]}")
    t0 = time.time()
    gen = torch.Generator().manual_seed(tcfg.seed)
    n, d = X[0].shape
    k, F_ = tcfg.k, tcfg.d_dict
    cfg = CLTConfig(n_layers=L, d_model=d, d_dict=F_, activation="topk", k=k, input_site=input_site,  # type: ignore[arg-type]
                    name=name, extra={"trained_by": "circuit-atlas", "train_config": asdict(tcfg),
                                      "train_tokens": n, **(extra or {})})
    clt = CrossLayerTranscoder(cfg)
    c_in = [math.sqrt(d) / float(x[:65536].norm(dim=-1).mean().clamp_min(1e-12)) for x in X]
    c_out = [math.sqrt(d) / float(y[:65536].norm(dim=-1).mean().clamp_min(1e-12)) for y in Y]
    with torch.no_grad():
        for i in range(L):
            xs, ys = X[i][:65536] * c_in[i], Y[i][:65536] * c_out[i]
            clt.b_dec[i].copy_(ys.mean(0))
            rows = torch.randint(0, xs.shape[0], (F_,), generator=gen)
            dec = ys[rows] - ys.mean(0)
            clt.W_dec[i][:, 0].copy_(dec / dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            enc = xs[rows] - xs.mean(0)
            clt.W_enc[i].copy_(0.1 * enc / enc.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    params = list(clt.parameters())
    opt = torch.optim.Adam(params, lr=tcfg.lr, betas=(0.9, 0.999))
    last_fired = torch.zeros(L, F_, dtype=torch.long)
    tokens_seen = 0
    aux_k = min(tcfg.aux_k or d // 2, F_)
    hist = TrainHistory()
    bar = tqdm(range(tcfg.steps), desc=f"train {name}", disable=not progress, leave=False)
    for step in bar:
        rows = torch.randint(0, n, (tcfg.batch_size,), generator=gen)
        xs = [X[i][rows] * c_in[i] for i in range(L)]
        ys = [Y[i][rows] * c_out[i] for i in range(L)]
        y_hat = [clt.b_dec[m].expand(tcfg.batch_size, d) for m in range(L)]
        pres, l0 = [], 0.0
        active = torch.zeros(L, F_, dtype=torch.bool)
        for i in range(L):
            pre = xs[i] @ clt.W_enc[i].T + clt.b_enc[i]
            vals, idx = pre.topk(k, dim=-1)
            vals = vals.clamp_min(0)
            dec = _decode(clt, i, idx, vals)
            for m in range(i, L):
                y_hat[m] = y_hat[m] + dec[:, m - i]
            active[i, idx[vals > 0]] = True
            l0 += float((vals > 0).float().sum(-1).mean()) / L
            pres.append(pre)
        errs = [ys[m] - y_hat[m] for m in range(L)]
        losses = [(errs[m] ** 2).sum() / ((ys[m] - ys[m].mean(0)) ** 2).sum().clamp_min(1e-12) for m in range(L)]
        loss = torch.stack(losses).mean()
        tokens_seen += tcfg.batch_size
        last_fired[active] = tokens_seen
        dead = (tokens_seen - last_fired) > tcfg.dead_after_tokens
        aux = torch.zeros(())
        for i in range(L):
            n_dead = int(dead[i].sum())
            if n_dead == 0 or tcfg.aux_coef <= 0:
                continue
            a_vals, a_idx = pres[i].masked_fill(~dead[i], float("-inf")).topk(min(aux_k, n_dead), dim=-1)
            e_hat = _decode(clt, i, a_idx, a_vals.clamp_min(0))
            resid = torch.stack([errs[m].detach() for m in range(i, L)], 1)
            aux = aux + tcfg.aux_coef * ((resid - e_hat) ** 2).sum() / (resid ** 2).sum().clamp_min(1e-12) / L
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        decay_lr_(opt, tcfg, step)
        opt.step()
        with torch.no_grad():
            for i in range(L):
                W = clt.W_dec[i]
                W.div_(W.flatten(1).norm(dim=-1).clamp_min(1e-12)[:, None, None])
            if (bool(dead.any()) and step > 0 and step % tcfg.resample_every == 0
                    and step < tcfg.resample_until * tcfg.steps):
                _resample_(clt, opt, dead, xs, [e.detach() for e in errs], gen)
                last_fired[dead] = tokens_seen
        if hist.log(tcfg, step, float(loss.detach()), l0, float(dead.float().mean())):
            bar.set_postfix(loss=f"{hist.loss[-1]:.4f}", l0=f"{l0:.1f}", dead=int(dead.sum()))
    bar.close()
    with torch.no_grad():  # fold the training scales back
        for i in range(L):
            clt.W_enc[i].mul_(c_in[i])
            for m in range(i, L):
                clt.W_dec[i][:, m - i].div_(c_out[m])
            clt.b_dec[i].div_(c_out[i])
    clt.requires_grad_(False)
    hist.seconds = time.time() - t0
    return clt, hist


@torch.no_grad()
def _resample_(clt: CrossLayerTranscoder, opt: torch.optim.Optimizer, dead: torch.Tensor, xs: list[torch.Tensor],
               errs: list[torch.Tensor], gen: torch.Generator) -> None:
    """Point dead features of each source layer at the residuals (of the layers they write to) of tokens
    drawn ∝ their squared error; encoder at 0.2× the live mean norm along the token's centred input."""
    L = clt.n_layers
    for i in range(L):
        idx = dead[i].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        e = torch.stack([errs[m] for m in range(i, L)], 1)  # [B, L − i, d]
        w = (e ** 2).sum((1, 2))
        pick = torch.multinomial(w / w.sum(), idx.numel(), replacement=True, generator=gen)
        ei, xi = e[pick], xs[i][pick] - xs[i].mean(0)
        live = ~dead[i]
        live_norm = clt.W_enc[i][live].norm(dim=-1).mean() if bool(live.any()) else torch.tensor(1.0)
        clt.W_dec[i][idx] = ei / ei.flatten(1).norm(dim=-1).clamp_min(1e-12)[:, None, None]
        clt.W_enc[i, idx] = 0.2 * live_norm * xi / xi.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        clt.b_enc[i, idx] = 0.0
        for p, sel in ((clt.W_enc, (i, idx)), (clt.b_enc, (i, idx)), (clt.W_dec[i], (idx,))):
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][sel] = 0.0


@torch.no_grad()
def clt_reconstruction_stats(clt: CrossLayerTranscoder, X: list[torch.Tensor], Y: list[torch.Tensor],
                             batch: int = 8192) -> dict:
    """Held-out quality per output layer and overall: explained variance of each MLP output, L0 per source
    layer (active features per position), dead fraction per source layer; ``explained_variance`` is the
    pooled 1 − Σ_m SSE_m / Σ_m SST_m, ``l0`` the mean over source layers."""
    L, n = clt.n_layers, X[0].shape[0]
    sse, sst, l0 = [0.0] * L, [0.0] * L, [0.0] * L
    fired = torch.zeros(L, clt.cfg.d_dict, dtype=torch.bool)
    means = [y.mean(0) for y in Y]
    for s in range(0, n, batch):
        acts = []
        for i in range(L):
            pre = clt.pre_activation(i, X[i][s:s + batch])
            g = clt.gate(i, pre)
            acts.append(pre * g)
            l0[i] += float(g.sum())
            fired[i] |= g.any(0)
        out = clt.decode(acts)
        for m in range(L):
            y = Y[m][s:s + batch]
            sse[m] += float(((y - out[m]) ** 2).sum())
            sst[m] += float(((y - means[m]) ** 2).sum())
    return {"explained_variance": 1.0 - sum(sse) / max(sum(sst), 1e-30),
            "explained_variance_per_layer": [1.0 - a / max(b, 1e-30) for a, b in zip(sse, sst, strict=True)],
            "l0": sum(l0) / (L * n), "l0_per_layer": [v / n for v in l0],
            "dead_fraction": float((~fired).float().mean()),
            "dead_fraction_per_layer": [float((~f).float().mean()) for f in fired], "n_tokens": n}


def clt_input_module(model: nn.Module, layer: int, input_site: str) -> nn.Module:
    """The module whose input is x_ℓ: the pre-MLP norm (``resid_mid``) or the MLP itself (``mlp_in``)."""
    block = blocks(model)[layer]
    if input_site == "resid_mid":
        return pre_mlp_norm_module(block.module)
    if input_site == "mlp_in":
        return block.mlp
    raise ValueError(f"a CLT reading {input_site!r} must be folded first (load it with model=...)")


@contextmanager
def clt_spliced(model: nn.Module, clt: CrossLayerTranscoder) -> Iterator[None]:
    """Within the block, every MLP outputs the CLT's reconstruction x̂_m from live inputs (no error term)."""
    acts: dict[int, torch.Tensor] = {}
    handles = []
    for b in blocks(model):
        def read(_m, args, kwargs, layer=b.index):
            x = module_input(args, kwargs)
            acts[layer] = clt.encode(layer, x.to(clt.W_enc.dtype))

        def write(_m, args, kwargs, out, layer=b.index):
            y = out[0] if isinstance(out, tuple) else out
            y_hat = clt.b_dec[layer] + sum(acts[s] @ clt.decoder(s, layer) for s in range(layer + 1))
            y_hat = y_hat.to(y.dtype)
            return (y_hat, *out[1:]) if isinstance(out, tuple) else y_hat

        handles.append(clt_input_module(model, b.index, clt.cfg.input_site)
                       .register_forward_pre_hook(read, with_kwargs=True))
        handles.append(b.mlp.register_forward_hook(write, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()

