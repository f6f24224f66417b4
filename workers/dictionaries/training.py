"""Training SAEs and transcoders on activations streamed from any Hugging Face causal LM.

Recipe (TopK: Gao et al. 2024; JumpReLU: Rajamanoharan et al. 2024):
  - inputs and targets are scaled to mean norm √d for training (one constant per side) and the
    scales are folded back into the weights afterwards, exactly, like lm-saes' dataset-wise norm;
  - decoder rows are kept at unit norm after every Adam step; the decoder bias starts at the target mean;
    ``init`` chooses where the features start:
      "data": decoder rows at random centred data points (targets), encoder rows at the matching inputs —
        random directions would start outside the low-dimensional subspace tiny models use, and die (the zoo);
      "random": random unit directions, encoder = decoder (Gao et al.) — at thousands of features on a real
        model the data points' reconstruction starts ~50× too large (EV −700 at step 0 on Gemma 3 270M's attention
        outputs; workers/dictionaries/README.md, "The recipe at 4,096 features");
  - ``centre_inputs``: the encoder (and skip path) see the inputs minus their mean, measured on the initialisation
    sample and folded into b_enc (and b_dec) at the end, exactly. Real models' MLP inputs and attention outputs
    carry a large constant part (on Gemma 3 270M the mean's norm is 0.66–0.82 of the mean norm); uncentred, it
    dominates every pre-activation, TopK picks the same features for every token, and the rest die;
  - transcoders with a skip connection start W_skip at the least-squares linear map x → y, so the
    features only have to explain what a linear map cannot;
  - dead features (no activation for ``dead_after_tokens`` tokens) get the AuxK loss: the top
    ``aux_k`` dead latents reconstruct the current residual (weight ``aux_coef``); and every
    ``resample_every`` steps (in the first ``resample_until`` of training) they are re-initialised
    at the residuals of badly reconstructed tokens (Anthropic's resampling), Adam state reset;
  - JumpReLU: threshold θ = exp(log θ) trained with straight-through estimators (rectangle kernel of
    width ``bandwidth``) for both the jump and the L0 penalty ``l0_coef``·E[L0].
The loss reported is the normalised MSE Σ‖y − ŷ‖²/Σ‖y − ȳ‖² (= 1 − explained variance on the batch).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workers.dictionaries.activations import collect_activations
from workers.dictionaries.formats import save_dictionary_set
from workers.dictionaries.metrics import reconstruction_stats, splice_ce
from workers.dictionaries.modules import Activation, Dictionary, DictionaryConfig, DictionarySet


@dataclass(frozen=True)
class TrainConfig:
    d_dict: int = 512
    activation: Activation = "topk"  # "topk" or "jumprelu"
    k: int = 16  # TopK
    skip: bool = False  # transcoders only
    steps: int = 800
    batch_size: int = 1024
    lr: float = 2e-3
    lr_decay_frac: float = 0.3  # linear decay to 0 over the last fraction of steps
    aux_k: int | None = None  # default d_out // 2
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 50_000
    init: Literal["data", "random"] = "data"  # where the features start (module doc)
    centre_inputs: bool = False  # train on inputs minus their mean (module doc)
    resample_every: int = 100
    resample_until: float = 0.6
    l0_coef: float = 5e-3  # JumpReLU sparsity weight (per active feature, on normalised MSE scale)
    bandwidth: float = 0.05  # JumpReLU STE kernel width (normalised units)
    init_threshold: float = 0.1  # JumpReLU
    log_every: int = 25
    seed: int = 0
    # Drop features that never fire on any training token at the end. On the training tokens the
    # function is unchanged (a TopK feature that never made the top k never mattered); the report
    # records how many were dropped and d_dict is the number kept.
    prune_dead: bool = False

    def __post_init__(self) -> None:
        if self.init not in ("data", "random"):  # "random" keeps Dictionary.init_weights_
            raise ValueError(f"TrainConfig.init must be 'data' or 'random', not {self.init!r}")


@dataclass
class TrainHistory:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # normalised MSE (+ aux terms excluded)
    l0: list[float] = field(default_factory=list)
    explained_variance: list[float] = field(default_factory=list)
    dead_fraction: list[float] = field(default_factory=list)
    seconds: float = 0.0
    pruned: int = 0  # features dropped by prune_dead

    def log(self, tcfg: TrainConfig, step: int, loss: float, l0: float, dead_fraction: float) -> bool:
        """Record ``step`` if it is one to log (every ``tcfg.log_every`` and the last); returns whether it was."""
        if step % tcfg.log_every != 0 and step != tcfg.steps - 1:
            return False
        self.step.append(step)
        self.loss.append(loss)
        self.l0.append(l0)
        self.explained_variance.append(1.0 - loss)
        self.dead_fraction.append(dead_fraction)
        return True


class _JumpReLU(torch.autograd.Function):
    """pre·(pre > θ); dθ via the rectangle-kernel straight-through estimator."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps
        return grad * (pre > theta), (-(theta * kernel) * grad).sum(0), None


class _Step(torch.autograd.Function):
    """Heaviside(pre − θ) with the straight-through gradient for θ (used for the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps
        return torch.zeros_like(pre), (-kernel * grad).sum(0), None


def _decode_topk(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_j vals[:, j]·W_dec[idx[:, j]] without materialising the dense activations. [n, d_out]"""
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")


@torch.no_grad()
def _resample_(d: Dictionary, opt: torch.optim.Optimizer, dead: torch.Tensor, x: torch.Tensor,
               err: torch.Tensor, gen: torch.Generator) -> None:
    """Point dead features at the residuals of tokens drawn ∝ their squared error; reset their Adam
    moments. The encoder row gets the token's input direction at 0.2× the mean live encoder norm."""
    idx = dead.nonzero().squeeze(1)
    weights = (err ** 2).sum(-1)
    # drawn on the CPU, where the trainers keep their generator (the same draws on every device)
    pick = torch.multinomial((weights / weights.sum()).cpu(), idx.numel(), replacement=True, generator=gen).to(err.device)
    e, xi = err[pick], x[pick] - x.mean(0)
    live_norm = d.W_enc[~dead].norm(dim=-1).mean() if bool((~dead).any()) else torch.tensor(1.0)
    d.W_dec[idx] = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    d.W_enc[idx] = 0.2 * live_norm * xi / xi.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    d.b_enc[idx] = 0.0
    for p in (d.W_enc, d.W_dec, d.b_enc):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][idx] = 0.0


def decay_lr_(opt: torch.optim.Optimizer, tcfg: TrainConfig, step: int) -> None:
    """The learning rate of ``step``: ``tcfg.lr``, decayed linearly to 0 over the last ``lr_decay_frac`` of the
    steps (shared by every trainer here and the cross-layer one)."""
    decay_start = int(tcfg.steps * (1 - tcfg.lr_decay_frac))
    if step >= decay_start:
        for g in opt.param_groups:
            g["lr"] = tcfg.lr * (tcfg.steps - step) / max(1, tcfg.steps - decay_start)


class DictionaryTrainer:
    """One dictionary's training, a step at a time: built from a sample of (X, Y) (the training scales and the
    data-point initialisation come from its first 65,536 rows), fed batches with :meth:`step`, closed with
    :meth:`finish`. :meth:`state_dict` / :meth:`from_state_dict` hold everything a step depends on (weights, Adam
    state, ``last_fired``, tokens seen, the generator, the history, the step), so a resumed trainer continues
    bit-identically. ``device``: where the weights and batches live (the generator stays on the CPU, so the
    random draws are the same on every device). :func:`train_dictionary` is a loop over it."""

    def __init__(self, cfg: DictionaryConfig, X: torch.Tensor, Y: torch.Tensor, tcfg: TrainConfig,
                 device: torch.device | str = "cpu") -> None:
        if cfg.activation not in ("topk", "jumprelu"):
            raise ValueError(f"training supports activation 'topk' or 'jumprelu', not {cfg.activation!r}")
        if X.shape[0] != Y.shape[0] or X.shape[1] != cfg.d_in or Y.shape[1] != cfg.d_out:
            raise ValueError(f"activations X {list(X.shape)} / Y {list(Y.shape)} do not fit {cfg.name}: "
                             f"expected [n, {cfg.d_in}] / [n, {cfg.d_out}]")
        self.cfg, self.tcfg, self.device = cfg, tcfg, torch.device(device)
        self._t0 = time.time()
        self.seconds_before = 0.0
        self.gen = torch.Generator().manual_seed(tcfg.seed)
        X, Y = X[:65536].to(self.device), Y[:65536].to(self.device)
        # One scale per side so that training sees mean norm √d (lr and bandwidth then transfer across sites).
        # With centre_inputs, the inputs' mean (of this sample, fixed) is subtracted before the scale is measured.
        mean_in = X.mean(0) if tcfg.centre_inputs else None
        X_in = X if mean_in is None else X - mean_in
        self.c_in = math.sqrt(cfg.d_in) / float(X_in.norm(dim=-1).mean().clamp_min(1e-12))
        self.mu_in = None if mean_in is None else mean_in * self.c_in  # in the scaled space
        self.c_out = math.sqrt(cfg.d_out) / float(Y.norm(dim=-1).mean().clamp_min(1e-12))
        d = Dictionary(cfg).init_weights_(self.gen).to(self.device)
        with torch.no_grad():
            xs, ys = X_in * self.c_in, Y * self.c_out
            if d.W_skip is not None:
                xc = xs - xs.mean(0)
                sol = torch.linalg.lstsq(xc, ys - ys.mean(0)).solution  # [d_in, d_out]
                d.W_skip.copy_(sol.T)
                resid = ys - xs @ sol
            else:
                resid = ys
            d.b_dec.copy_(resid.mean(0))
            if tcfg.init == "data":
                rows = torch.randint(0, xs.shape[0], (cfg.d_dict,), generator=self.gen).to(self.device)
                dec = resid[rows] - resid.mean(0)
                d.W_dec.copy_(dec / dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
                if cfg.kind == "sae":
                    d.W_enc.copy_(d.W_dec)
                else:
                    # Small encoder rows: features start quiet, so the skip path's fit is not drowned in noise.
                    enc = xs[rows] - xs.mean(0)
                    d.W_enc.copy_(0.1 * enc / enc.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            if cfg.activation == "jumprelu":
                d.threshold.fill_(tcfg.init_threshold)
        self._setup(d)

    def _setup(self, d: Dictionary) -> None:
        cfg, tcfg = self.cfg, self.tcfg
        self.d = d
        self.log_theta: torch.nn.Parameter | None = None
        params: list[torch.nn.Parameter] = [d.W_enc, d.b_enc, d.W_dec, d.b_dec]
        if d.W_skip is not None:
            params.append(d.W_skip)
        if cfg.activation == "jumprelu":
            self.log_theta = torch.nn.Parameter(d.threshold.detach().log())
            params.append(self.log_theta)
        self.opt = torch.optim.Adam(params, lr=tcfg.lr, betas=(0.9, 0.999))
        self.last_fired = torch.zeros(cfg.d_dict, dtype=torch.long, device=self.device)  # tokens seen at last firing
        self.tokens_seen = 0
        self.aux_k = min(tcfg.aux_k or cfg.d_out // 2, cfg.d_dict)
        self.hist = TrainHistory()
        self.step_index = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """One Adam step on a batch of inputs x [b, d_in] and targets y [b, d_out] (unscaled). Returns whether
        the step was logged in the history."""
        cfg, tcfg, d, step = self.cfg, self.tcfg, self.d, self.step_index
        x, y = x.to(self.device) * self.c_in, y.to(self.device) * self.c_out
        if self.mu_in is not None:
            x = x - self.mu_in
        pre = x @ d.W_enc.T + d.b_enc
        base = d.b_dec if d.W_skip is None else d.b_dec + x @ d.W_skip.T
        aux = torch.zeros((), device=self.device)
        l0_pen = torch.zeros((), device=self.device)
        if cfg.activation == "topk":
            vals, idx = pre.topk(cfg.k, dim=-1)
            vals = vals.clamp_min(0)
            y_hat = base + _decode_topk(idx, vals, d.W_dec)
            active = torch.zeros(cfg.d_dict, dtype=torch.bool, device=self.device)
            active[idx[vals > 0]] = True
            l0 = float((vals > 0).float().sum(-1).mean())
        else:
            theta = self.log_theta.exp()  # type: ignore[union-attr]
            acts = _JumpReLU.apply(pre, theta, tcfg.bandwidth)
            y_hat = base + acts @ d.W_dec
            l0_pen = _Step.apply(pre, theta, tcfg.bandwidth).sum(-1).mean()
            active = (pre > theta).any(0)
            l0 = float((pre > theta).float().sum(-1).mean())
        err = y - y_hat
        denom = ((y - y.mean(0)) ** 2).sum().clamp_min(1e-12)
        loss = (err ** 2).sum() / denom
        self.tokens_seen += x.shape[0]
        self.last_fired[active] = self.tokens_seen
        dead = (self.tokens_seen - self.last_fired) > tcfg.dead_after_tokens
        n_dead = int(dead.sum())
        if n_dead > 0 and tcfg.aux_coef > 0:
            # AuxK: the top dead latents try to explain the residual the live ones leave.
            k_aux = min(self.aux_k, n_dead)
            masked = pre.masked_fill(~dead, float("-inf"))
            a_vals, a_idx = masked.topk(k_aux, dim=-1)
            a_vals = a_vals.clamp_min(0)
            e_hat = _decode_topk(a_idx, a_vals, d.W_dec)
            resid = err.detach()
            aux = tcfg.aux_coef * ((resid - e_hat) ** 2).sum() / (resid ** 2).sum().clamp_min(1e-12)
        total = loss + aux + (tcfg.l0_coef * l0_pen if cfg.activation == "jumprelu" else 0.0)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        decay_lr_(self.opt, tcfg, step)
        self.opt.step()
        with torch.no_grad():
            d.W_dec.div_(d.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            if (n_dead and step > 0 and step % tcfg.resample_every == 0
                    and step < tcfg.resample_until * tcfg.steps):
                _resample_(d, self.opt, dead, x, err.detach(), self.gen)
                self.last_fired[dead] = self.tokens_seen
        self.step_index += 1
        return self.hist.log(tcfg, step, float(loss.detach()), l0, n_dead / cfg.d_dict)

    def finish(self, prune_X: torch.Tensor | None = None) -> tuple[Dictionary, TrainHistory]:
        """The trained dictionary in canonical form (training scales folded back) on the CPU, and the history.
        With ``tcfg.prune_dead``, ``prune_X`` (the training inputs) decides which features never fired."""
        d, hist = self.d, self.hist
        with torch.no_grad():
            if self.log_theta is not None:
                d.threshold.copy_(self.log_theta.exp())
            # Fold the centring in: (c_in·x − μ)·W + b = c_in·x·W + (b − μ·W), for the encoder and the skip path.
            if self.mu_in is not None:
                d.b_enc.sub_(d.W_enc @ self.mu_in)
                if d.W_skip is not None:
                    d.b_dec.sub_(d.W_skip @ self.mu_in)
            # Fold the training scales back: pre(c_in·x) stays the same pre-activation (threshold unchanged);
            # outputs are divided by c_out.
            d.W_enc.mul_(self.c_in)
            d.W_dec.div_(self.c_out)
            d.b_dec.div_(self.c_out)
            if d.W_skip is not None:
                d.W_skip.mul_(self.c_in / self.c_out)
        d = d.cpu()
        for p in d.parameters():
            p.requires_grad_(False)
        if self.tcfg.prune_dead:
            if prune_X is None:
                raise ValueError(f"{self.cfg.name}: prune_dead needs the training inputs (prune_X)")
            d, hist.pruned = prune_never_firing(d, prune_X)
        hist.seconds = self.seconds_before + time.time() - self._t0
        return d, hist

    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on (tensors on the CPU; ``torch.save`` it)."""
        return {"cfg": self.cfg.to_dict(), "tcfg": asdict(self.tcfg), "c_in": self.c_in, "c_out": self.c_out,
                "mu_in": None if self.mu_in is None else self.mu_in.cpu().clone(),
                "weights": {k: v.detach().cpu().clone() for k, v in self.d.state_dict().items()},
                "log_theta": None if self.log_theta is None else self.log_theta.detach().cpu().clone(),
                "opt": self.opt.state_dict(), "last_fired": self.last_fired.cpu().clone(),
                "tokens_seen": self.tokens_seen, "gen": self.gen.get_state(), "hist": asdict(self.hist),
                "step": self.step_index, "seconds": self.seconds_before + time.time() - self._t0}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> DictionaryTrainer:
        """The trainer that :meth:`state_dict` described, ready to continue."""
        self = cls.__new__(cls)
        self.cfg = DictionaryConfig.from_dict(state["cfg"])
        self.tcfg = TrainConfig(**state["tcfg"])
        self.device = torch.device(device)
        self._t0, self.seconds_before = time.time(), float(state["seconds"])
        self.gen = torch.Generator()
        self.gen.set_state(state["gen"])
        self.c_in, self.c_out = state["c_in"], state["c_out"]
        self.mu_in = None if state["mu_in"] is None else state["mu_in"].to(self.device)
        d = Dictionary(self.cfg)
        d.load_state_dict(state["weights"])
        self._setup(d.to(self.device))
        if self.log_theta is not None:
            with torch.no_grad():
                self.log_theta.copy_(state["log_theta"])
        self.opt.load_state_dict(state["opt"])
        self.last_fired.copy_(state["last_fired"])
        self.tokens_seen = int(state["tokens_seen"])
        self.hist = TrainHistory(**state["hist"])
        self.step_index = int(state["step"])
        return self


def train_dictionary(
    cfg: DictionaryConfig,
    X: torch.Tensor,
    Y: torch.Tensor,
    tcfg: TrainConfig,
    progress: bool = True,
) -> tuple[Dictionary, TrainHistory]:
    """Train one dictionary on inputs X [n, d_in] → targets Y [n, d_out] (X is Y for an SAE), each step on
    ``tcfg.batch_size`` rows drawn at random (with replacement).

    Returns the dictionary in canonical form (training scales folded back in) and its history.
    """
    trainer = DictionaryTrainer(cfg, X, Y, tcfg)
    n = X.shape[0]
    bar = tqdm(range(tcfg.steps), desc=f"train {cfg.name}", disable=not progress, leave=False)
    for _ in bar:
        rows = torch.randint(0, n, (tcfg.batch_size,), generator=trainer.gen)
        if trainer.step(X[rows], Y[rows]):
            h = trainer.hist
            bar.set_postfix(loss=f"{h.loss[-1]:.4f}", l0=f"{h.l0[-1]:.1f}", dead=round(h.dead_fraction[-1] * cfg.d_dict))
    bar.close()
    return trainer.finish(prune_X=X)


@torch.no_grad()
def prune_never_firing(d: Dictionary, X: torch.Tensor, batch: int = 8192) -> tuple[Dictionary, int]:
    """A copy of ``d`` without the features whose gate is never open on X [n, d_in]; returns it and the
    number dropped. On X the copy computes exactly what ``d`` computes."""
    fired = torch.zeros(d.cfg.d_dict, dtype=torch.bool)
    for i in range(0, X.shape[0], batch):
        fired |= d.gate(d.pre_activation(X[i:i + batch])).any(0)
    keep = fired.nonzero().squeeze(1)
    if cfg_k := d.cfg.k:
        if keep.numel() < cfg_k:  # keep at least k features so TopK stays well defined
            extra = (~fired).nonzero().squeeze(1)[: cfg_k - keep.numel()]
            keep = torch.cat([keep, extra]).sort().values
    if keep.numel() == d.cfg.d_dict:
        return d, 0
    t = d.tensors()
    rows = {"W_enc", "b_enc", "W_dec", "threshold"}
    new_t = {k: (v[keep] if k in rows else v) for k, v in t.items()}
    cfg = replace(d.cfg, d_dict=int(keep.numel()),
                  extra={**d.cfg.extra, "pruned_never_firing": d.cfg.d_dict - int(keep.numel())})
    return Dictionary.from_tensors(cfg, new_t).requires_grad_(False), d.cfg.d_dict - int(keep.numel())


def write_report(d: Dictionary, hist: TrainHistory, metrics: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``<name>.report.json`` (config, train config, history, held-out metrics) and ``<name>.report.png``
    (loss, L0 and explained variance over steps) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = d.cfg.name
    js = out_dir / f"{name}.report.json"
    js.write_text(json.dumps({"dictionary": d.cfg.to_dict(), "history": asdict(hist), "metrics": metrics},
                             indent=2, default=str))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(hist.step, hist.loss)
    axes[0].set_yscale("log")
    axes[0].set_title("normalised MSE")
    axes[1].plot(hist.step, hist.l0)
    axes[1].set_title("L0")
    axes[2].plot(hist.step, hist.explained_variance)
    axes[2].set_ylim(max(0.0, min(hist.explained_variance[-1] - 0.2, 0.8)), 1.0)
    axes[2].set_title("explained variance")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name} ({d.cfg.kind}, {d.cfg.activation}, d_dict={d.cfg.d_dict})")
    fig.tight_layout()
    png = out_dir / f"{name}.report.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return js, png


def site_dictionary_config(layer: int, site: str, d_in: int, d_out: int, tc: TrainConfig, model_name: str,
                           **provenance: Any) -> DictionaryConfig:
    """The config of the dictionary ``tc`` trains at ``(layer, site)``: an SAE at an attention output, a transcoder
    at an MLP (with a skip connection if ``tc.skip``). ``extra`` records the trainer, the model, ``tc`` and
    ``provenance`` (e.g. the training tokens)."""
    kind = "sae" if site == "attn" else "transcoder"
    return DictionaryConfig(kind=kind, site=site, layer=layer, d_in=d_in, d_out=d_out,  # type: ignore[arg-type]
                            d_dict=tc.d_dict, activation=tc.activation, k=tc.k if tc.activation == "topk" else None,
                            skip=tc.skip and kind == "transcoder",
                            extra={"trained_by": "circuit-atlas", "model_name": model_name, "train_config": asdict(tc),
                                   **provenance})


def train_dictionaries(
    model: torch.nn.Module,
    token_batches: Iterable[torch.Tensor],
    sites: list[tuple[int, str]],
    out_dir: Path,
    train_cfg: TrainConfig | dict[str, TrainConfig] = TrainConfig(),
    heldout_batches: list[torch.Tensor] | None = None,
    heldout_frac: float = 0.1,
    max_tokens: int | None = None,
    drop_positions: int = 0,
    model_name: str = "",
    model_hash: str = "",
    splice_per_site: bool = True,
    progress: bool = True,
) -> tuple[DictionarySet, dict]:
    """Collect activations at ``sites``, train a dictionary per site, evaluate on held-out tokens, and save
    the set (native format) with per-dictionary reports and ``report.json`` in ``out_dir``.

    ``train_cfg`` may map the site kind ("attn" / "mlp") to its own TrainConfig. Held-out tokens are
    ``heldout_batches`` or, if None, the last ``heldout_frac`` of the collected activations (then CE is
    measured on the last batch(es) of ``token_batches``).
    """
    t0 = time.time()
    token_batches = [torch.as_tensor(b) for b in token_batches]
    acts = collect_activations(model, token_batches, sites, max_tokens=max_tokens,
                               drop_positions=drop_positions, progress=progress)
    held = None
    if heldout_batches is not None:
        held = collect_activations(model, heldout_batches, sites, drop_positions=drop_positions)
    t_collect = time.time() - t0
    dicts: dict[tuple[int, str], Dictionary] = {}
    report: dict[str, Any] = {"model_name": model_name, "collect_seconds": t_collect, "dictionaries": {}}
    for layer, site in sites:
        tc = train_cfg[site] if isinstance(train_cfg, dict) else train_cfg
        X, Y = acts[(layer, site)]
        if held is not None:
            Xh, Yh = held[(layer, site)]
        else:
            cut = int(X.shape[0] * (1 - heldout_frac))
            X, Y, Xh, Yh = X[:cut], Y[:cut], X[cut:], Y[cut:]
        cfg = site_dictionary_config(layer, site, X.shape[1], Y.shape[1], tc, model_name,
                                     train_tokens=int(X.shape[0]))
        d, hist = train_dictionary(cfg, X, Y, tc, progress=progress)
        stats = reconstruction_stats(d, Xh, Yh).to_dict()
        dicts[(layer, site)] = d
        report["dictionaries"][cfg.name] = {**stats, "d_dict": d.cfg.d_dict, "pruned": hist.pruned,
                                            "train_seconds": hist.seconds, "train_tokens": int(X.shape[0])}
        write_report(d, hist, stats, out_dir)
    ds = DictionarySet(dicts, model_name=model_name, model_hash=model_hash)
    ce_batches = heldout_batches if heldout_batches is not None else token_batches[-max(1, len(token_batches) // 10):]
    report["cross_entropy"] = splice_ce(model, ds, ce_batches, per_site=splice_per_site)
    report["seconds"] = time.time() - t0
    save_dictionary_set(ds, out_dir)
    report["content_hash"] = ds.content_hash()
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
    return ds, report


# The zoo's recipe: tuned on the 4-layer GPT-2 of workers/zoo (d_model 128) to meet the quality bar
# (EV ≥ 0.90 per site, dead < 10%, CE increase with all 8 sites spliced ≤ 10%) within ~6 CPU minutes.
# Its MLP outputs need few features (EV > 0.99 at 256), so transcoders are smaller, skip-free (every
# MLP effect goes through features) and pruned of features that never fire on the training tokens.
ZOO_ATTN = TrainConfig(d_dict=512, activation="topk", k=16, steps=600, batch_size=1024, lr=2e-3, prune_dead=True)
ZOO_MLP = replace(ZOO_ATTN, d_dict=256)
ZOO_MAX_TOKENS = 200_000


def check_quality_bar(report: dict, min_ev: float = 0.90, max_dead: float = 0.10, max_ce: float = 0.10) -> list[str]:
    """The zoo's quality bar; returns the list of failures (empty = pass)."""
    fails = []
    for name, r in report["dictionaries"].items():
        if r["explained_variance"] < min_ev:
            fails.append(f"{name}: explained variance {r['explained_variance']:.3f} < {min_ev}")
        if r["dead_fraction"] >= max_dead:
            fails.append(f"{name}: dead fraction {r['dead_fraction']:.3f} >= {max_dead}")
    rel = report["cross_entropy"]["all"]["relative_increase"]
    if rel > max_ce:
        fails.append(f"CE increase with all sites spliced {rel:.3%} > {max_ce:.0%}")
    return fails


def train_zoo_dictionaries(model_dir: Path, token_batches: Iterable[torch.Tensor], out_dir: Path,
                           progress: bool = True) -> dict:
    """Train an attention SAE and a transcoder on every layer of the zoo model in ``model_dir`` (an HF
    directory) and save them as one native dictionary set in ``out_dir``.

    ``token_batches``: [batch, pos] token-id tensors; 10% (at least one batch) are held out for the
    metrics. Returns the report (also in ``out_dir/report.json``), with ``quality_failures`` listing any
    miss of the bar (empty when met).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batches = [torch.as_tensor(b) for b in token_batches]
    if len(batches) < 2:
        raise ValueError("train_zoo_dictionaries needs at least 2 token batches (one is held out)")
    n_held = max(1, len(batches) // 10)
    train, held = batches[:-n_held], batches[-n_held:]
    n_layers = model.config.num_hidden_layers
    sites = [(layer, site) for layer in range(n_layers) for site in ("attn", "mlp")]
    _, report = train_dictionaries(
        model, train, sites, Path(out_dir), train_cfg={"attn": ZOO_ATTN, "mlp": ZOO_MLP}, heldout_batches=held,
        max_tokens=ZOO_MAX_TOKENS, model_name=str(getattr(model.config, "name_or_path", "") or Path(model_dir).name),
        progress=progress,
    )
    report["quality_failures"] = check_quality_bar(report)
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
    return report
