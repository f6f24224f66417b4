"""Sparse dictionaries spliced into a model: SAEs (rewrite an attention output) and transcoders (read the
MLP input, write the MLP output).

One canonical parameterisation, whatever file format a dictionary came from (readers fold input
normalisation and decoder-bias subtraction into these tensors):

    pre  = x @ W_enc.T + b_enc                       [..., d_dict]   (the engine reads targets here)
    gate = activation-specific mask of pre          [..., d_dict]   (the engine freezes it)
    a    = pre * gate                               [..., d_dict]
    x̂    = a @ W_dec + b_dec (+ x @ W_skip.T)        [..., d_out]

Rows of ``W_enc`` and ``W_dec`` are features (circuit-tracer's orientation).

Gates, per activation:
    relu      pre > 0
    jumprelu  pre > threshold          (readers fold a ReLU in front as max(threshold, 0))
    topk      the k largest entries of pre, and pre > 0 (SAELens, lm-saes, our training);
              with ``topk_signed`` the k largest whatever their sign (circuit-tracer's TopK)
"""

from __future__ import annotations

import hashlib
import json
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
    # TopK only: keep the k largest pre-activations even when negative (circuit-tracer's TopK). The
    # default (False) also requires pre > 0, as SAELens, lm-saes and our own training do.
    topk_signed: bool = False

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
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown dictionary config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical tensor names and shapes for this config (what files must provide)."""
        shapes: dict[str, tuple[int, ...]] = {
            "W_enc": (self.d_dict, self.d_in),
            "b_enc": (self.d_dict,),
            "W_dec": (self.d_dict, self.d_out),
            "b_dec": (self.d_out,),
        }
        if self.activation == "jumprelu":
            shapes["threshold"] = (self.d_dict,)
        if self.skip:
            shapes["W_skip"] = (self.d_out, self.d_in)
        return shapes


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
        # TopK: the k largest pre-activations (and, unless topk_signed, only the positive ones).
        k = min(int(self.cfg.k), pre.shape[-1])  # type: ignore[arg-type]
        idx = pre.topk(k, dim=-1).indices
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, idx, True)
        return mask if self.cfg.topk_signed else mask & (pre > 0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> feature activations [..., d_dict]"""
        pre = self.pre_activation(x)
        return pre * self.gate(pre)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """[..., d_dict] -> [..., d_out], without the skip path."""
        return acts @ self.W_dec + self.b_dec

    def skip_out(self, x: torch.Tensor) -> torch.Tensor | None:
        """[..., d_in] -> [..., d_out], or None without a skip connection."""
        return None if self.W_skip is None else x @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x̂ [..., d_out] from the site input x [..., d_in]."""
        out = self.decode(self.encode(x))
        skip = self.skip_out(x)
        return out if skip is None else out + skip

    # -- construction and housekeeping ---------------------------------------------------------
    @classmethod
    def from_tensors(cls, cfg: DictionaryConfig, tensors: dict[str, torch.Tensor], source: str = "") -> Dictionary:
        """Build a dictionary from canonical tensors, checking every name and shape.

        ``source`` names the file the tensors came from, for error messages. Extra tensors are refused
        too: a silently ignored tensor usually means a misread format.
        """
        where = f" in {source}" if source else ""
        expected = cfg.tensor_shapes()
        missing = [k for k in expected if k not in tensors]
        if missing:
            raise ValueError(
                f"missing tensor(s) {missing}{where}: dictionary {cfg.name!r} needs "
                + ", ".join(f"{k} {list(v)}" for k, v in expected.items())
            )
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise ValueError(f"unexpected tensor(s) {extra}{where} for dictionary {cfg.name!r} "
                             f"(activation {cfg.activation!r}, skip={cfg.skip})")
        d = cls(cfg)
        for k, shape in expected.items():
            t = tensors[k]
            if tuple(t.shape) != shape:
                raise ValueError(f"tensor {k!r}{where} has shape {list(t.shape)}; expected {list(shape)} "
                                 f"for dictionary {cfg.name!r} (d_in={cfg.d_in}, d_out={cfg.d_out}, "
                                 f"d_dict={cfg.d_dict})")
            getattr(d, k).data.copy_(t.detach().to(torch.float32))
        return d

    def tensors(self) -> dict[str, torch.Tensor]:
        """Canonical tensors by name (detached, contiguous, on the CPU), as the native format stores them."""
        return {k: getattr(self, k).detach().cpu().contiguous() for k in self.cfg.tensor_shapes()}

    @torch.no_grad()
    def init_weights_(self, generator: torch.Generator | None = None) -> Dictionary:
        """Training initialisation: unit-norm random decoder rows, encoder = decoder transpose (tied at
        the start, as in Gao et al. 2024 and SAELens), zero biases, zero skip, threshold 0."""
        W = torch.randn(self.cfg.d_dict, self.cfg.d_out, generator=generator)
        W /= W.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(W)
        if self.cfg.d_in == self.cfg.d_out:
            self.W_enc.copy_(W)
        else:
            V = torch.randn(self.cfg.d_dict, self.cfg.d_in, generator=generator)
            self.W_enc.copy_(V / V.norm(dim=-1, keepdim=True))
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()
        if self.threshold is not None:
            self.threshold.zero_()
        return self

    @torch.no_grad()
    def normalise_decoder_(self) -> torch.Tensor:
        """Rescale decoder rows to unit norm and compensate in the encoder so the function is unchanged:
        each pre-activation (and JumpReLU threshold) scales by its positive row norm, which leaves
        ReLU and JumpReLU gates as they were. TopK is refused: rescaling features reorders them.
        Returns the old norms [d_dict]."""
        if self.cfg.activation == "topk":
            raise ValueError("normalise_decoder_ would change which features a TopK dictionary selects; "
                             "normalise TopK decoders during training instead")
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[:, None])
        self.b_enc.mul_(norms)
        if self.threshold is not None:
            self.threshold.mul_(norms)
        return norms

    def content_hash(self) -> str:
        """sha256 over the config and tensor bytes: identical dictionaries hash identically."""
        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True, default=str).encode())
        for k, t in self.tensors().items():
            h.update(k.encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


@dataclass
class DictionarySet:
    """Dictionaries keyed by (layer, site); what gets spliced into one model."""

    dictionaries: dict[tuple[int, str], Dictionary]
    model_name: str = ""
    model_hash: str = ""  # content hash of the model the set was trained for, when known

    def get(self, layer: int, site: str) -> Dictionary | None:
        return self.dictionaries.get((layer, site))

    def __getitem__(self, key: tuple[int, str]) -> Dictionary:
        if key not in self.dictionaries:
            raise KeyError(f"no dictionary at (layer, site) {key}; this set has {sorted(self.dictionaries)}")
        return self.dictionaries[key]

    def content_hash(self) -> str:
        """sha256 over the members' content hashes, in (layer, site) order."""
        h = hashlib.sha256()
        for key, d in self:
            h.update(f"{key}".encode())
            h.update(d.content_hash().encode())
        return h.hexdigest()

    def __iter__(self):
        return iter(sorted(self.dictionaries.items()))

    def __len__(self) -> int:
        return len(self.dictionaries)
