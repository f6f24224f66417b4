"""Norm freezing: detect a normalisation module's formula from one clean run, and apply it with the
recorded scale (DESIGN.md §2). ``fit_norm`` finds which of LayerNorm, RMSNorm or Gemma's ``(1 + w)``-RMSNorm
reproduces the module's output, and the per-row scale; ``frozen_norm_output`` is then affine in its input.
Used by the linearised model (``linearise.py``), its adjoint (``adjoint.py``) and the virtual weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class NormRecord:
    """A normalisation frozen as ``y = s · centre(x) · w' + b`` with ``s`` per row (position, head)."""

    centre: bool
    weight_form: str  # "w", "1+w" or "none"
    scale: torch.Tensor  # input.shape[:-1] + (1,), from the batch-1 clean run


def is_norm(module: nn.Module) -> bool:
    if isinstance(module, nn.LayerNorm | nn.RMSNorm | nn.GroupNorm):
        return True
    name = type(module).__name__
    return name.endswith(("Norm", "LayerNorm", "RMSNorm", "LayerNorm2d")) and not list(module.children())


def norm_params(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    return (w if isinstance(w, torch.Tensor) else None, b if isinstance(b, torch.Tensor) else None)


def _apply_weight(u: torch.Tensor, w: torch.Tensor | None, form: str) -> torch.Tensor:
    if form == "w":
        return u * w
    if form == "1+w":
        return u * (1.0 + w)
    return u


def _norm_eps(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon", "epsilon"):
        v = getattr(module, name, None)
        if isinstance(v, int | float):
            return float(v)
    return None


def _fit_tolerance(dtype: torch.dtype) -> float:
    """Relative error (of the largest output) under which a formula counts as reproducing a norm: 1e-4 in
    fp32; in a 16-bit dtype the module's own output is rounded to ~2⁻⁸ relative, so 4 of its ε."""
    return max(1e-4, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4


def fit_norm(module: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> NormRecord:
    """Find which of the usual formulas reproduces this norm's output, and the per-row scale.

    Candidates ``y = s · centre(x) · w' + b``: centring (LayerNorm) or not (RMSNorm), weight ``w``, Gemma's
    ``1 + w`` or none. ``s`` is fitted per row by least squares, then the reconstruction is checked.
    """
    w, b = norm_params(module)
    xf, yf = x.detach().double(), y.detach().double()
    target = yf - (b.detach().double() if b is not None else 0.0)
    forms = ["w", "1+w"] if w is not None else ["none"]
    centres = [True, False] if isinstance(module, nn.LayerNorm) else [False, True]
    best = None
    for centre in centres:
        xc = xf - xf.mean(-1, keepdim=True) if centre else xf
        for form in forms:
            u = _apply_weight(xc, None if w is None else w.detach().double(), form)
            s = (target * u).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True).clamp_min(1e-300)
            err = (target - s * u).abs().max().item()
            tol = _fit_tolerance(x.dtype) * max(target.abs().max().item(), 1e-6)
            if err <= tol:
                # Prefer the module's own formula 1/sqrt(mean(x_c²) + eps) computed in the input's dtype
                # (bit-closer to the clean run than the fit) when it reproduces the output too.
                eps = _norm_eps(module)
                if eps is not None:
                    xc32 = x.detach().float()
                    xc32 = xc32 - xc32.mean(-1, keepdim=True) if centre else xc32
                    s32 = torch.rsqrt(xc32.pow(2).mean(-1, keepdim=True) + eps)
                    if (target - s32.double() * u).abs().max().item() <= tol:
                        return NormRecord(centre=centre, weight_form=form, scale=s32.to(x.dtype))
                return NormRecord(centre=centre, weight_form=form, scale=s.to(x.dtype))
            best = err if best is None else min(best, err)
    raise ValueError(
        f"cannot freeze normalisation {name} ({type(module).__name__}): none of LayerNorm, RMSNorm or "
        f"(1 + w)-RMSNorm reproduces its output (best max error {best:.3g}); the engine needs it to be "
        "y = scale · (x or x − mean) · weight + bias"
    )


def frozen_norm_output(rec: NormRecord, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w, b = norm_params(module)
    scale = rec.scale
    if tuple(scale.shape[1:-1]) != tuple(x.shape[1:-1]):
        # a prefix run (causal cone): cut the scale along the one axis whose length differs
        diff = [i for i in range(1, x.dim() - 1) if scale.shape[i] != x.shape[i]]
        if len(diff) != 1:
            raise RuntimeError(f"frozen norm: cannot align scale {tuple(scale.shape)} with input {tuple(x.shape)}")
        scale = scale.narrow(diff[0], 0, x.shape[diff[0]])
    xc = x - x.mean(-1, keepdim=True) if rec.centre else x
    y = _apply_weight(xc * scale.to(x.dtype), w, rec.weight_form)
    return y + b if b is not None else y
