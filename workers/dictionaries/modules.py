"""Sparse dictionaries spliced into a model: SAEs (rewrite an attention output) and transcoders (read the
MLP input, write the MLP output).

One canonical parameterisation, whatever file format a dictionary came from (readers fold input
normalisation and decoder-bias subtraction into these tensors):

    pre  = x @ W_enc.T + b_enc                       [..., d_dict]   (the engine reads targets here)
    gate = activation-specific mask of pre          [..., d_dict]   (the engine freezes it)
    a    = pre * gate                               [..., d_dict]
    x̂    = a @ W_dec + b_dec (+ x @ W_skip.T)        [..., d_out]

Rows of ``W_enc`` and ``W_dec`` are features (circuit-tracer's orientation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

DictionaryKind = Literal["sae", "transcoder"]
Activation = Literal["relu", "jumprelu", "topk"]
# Sites are named by what the dictionary rewrites: "attn" = the attention block's output (SAE),
# "mlp" = the MLP block, read at its input (after the pre-MLP norm) and written at its output (transcoder).
SiteName = Literal["attn", "mlp"]


@dataclass(frozen=True)
class DictionaryConfig:
    kind: DictionaryKind
    site: SiteName
    layer: int
    d_in: int
    d_out: int
    d_dict: int
    activation: Activation = "relu"
    k: int | None = None  # TopK only
    skip: bool = False  # transcoder skip connection W_skip [d_out, d_in]
    name: str = ""  # e.g. "L2.mlp"; filled from layer/site when empty
    extra: dict = field(default_factory=dict)  # provenance from the source format (hook names, model name)

    def __post_init__(self) -> None:
        if self.activation == "topk" and (self.k is None or self.k <= 0):
            raise ValueError("activation 'topk' needs a positive k")
        if self.kind == "sae" and self.site != "attn":
            raise ValueError("an SAE rewrites an attention output: site must be 'attn'")
        if self.kind == "transcoder" and self.site != "mlp":
            raise ValueError("a transcoder replaces an MLP: site must be 'mlp'")
        if not self.name:
            object.__setattr__(self, "name", f"L{self.layer}.{self.site}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DictionaryConfig:
        return cls(**d)


class Dictionary(nn.Module):
    """An SAE or transcoder in canonical form (see the module docstring)."""

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_dict, cfg.d_in))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_dict))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_dict, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_dict))
        else:
            self.register_parameter("threshold", None)
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))
        else:
            self.register_parameter("W_skip", None)

    # -- the four stages the engine needs separately -------------------------------------------
    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> [..., d_dict]"""
        return x @ self.W_enc.T + self.b_enc

    def gate(self, pre: torch.Tensor) -> torch.Tensor:
        """Boolean mask of active features, [..., d_dict]. Frozen by the engine."""
        if self.cfg.activation == "relu":
            return pre > 0
        if self.cfg.activation == "jumprelu":
            return pre > self.threshold
        # TopK: the k largest pre-activations that are also positive.
        k = min(int(self.cfg.k), pre.shape[-1])  # type: ignore[arg-type]
        idx = pre.topk(k, dim=-1).indices
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, idx, True)
        return mask & (pre > 0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> feature activations [..., d_dict]"""
        pre = self.pre_activation(x)
        return pre * self.gate(pre)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """[..., d_dict] -> [..., d_out], without the skip path."""
        return acts @ self.W_dec + self.b_dec

    def skip_out(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.W_skip is None else x @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x̂ [..., d_out] from the site input x [..., d_in]."""
        out = self.decode(self.encode(x))
        skip = self.skip_out(x)
        return out if skip is None else out + skip


@dataclass
class DictionarySet:
    """Dictionaries keyed by (layer, site); what gets spliced into one model."""

    dictionaries: dict[tuple[int, str], Dictionary]
    model_name: str = ""

    def get(self, layer: int, site: str) -> Dictionary | None:
        return self.dictionaries.get((layer, site))

    def __iter__(self):
        return iter(sorted(self.dictionaries.items()))

    def __len__(self) -> int:
        return len(self.dictionaries)
