"""Cross-layer transcoders (CLTs): a feature reads the residual stream before one layer's MLP and writes
to the MLP output of that layer and of every later layer (DESIGN.md §6; circuit-tracer's
``CrossLayerTranscoder``).

Per source layer ℓ (of L), rows = features:

    pre_ℓ  = x_ℓ @ W_enc[ℓ].T + b_enc[ℓ]          W_enc [L, d_dict, d_model]    x_ℓ [..., d_model]
    a_ℓ    = pre_ℓ ⊙ gate_ℓ(pre_ℓ)                 gate as in ``workers.dictionaries.modules``
    x̂_m    = Σ_{ℓ ≤ m} a_ℓ @ W_dec[ℓ][:, m − ℓ] + b_dec[m]      W_dec[ℓ] [d_dict, L − ℓ, d_model]

``x_ℓ`` is read at ``input_site``: ``"resid_mid"`` (the residual stream entering layer ℓ's pre-MLP norm,
circuit-tracer's ``hook_resid_mid`` and its default) or ``"mlp_in"`` (the MLP module's input, after the
norm, where our per-layer transcoders read). ``b_dec[m]`` is the bias of output layer m, added once.
A CLT has no skip path (circuit-tracer ignores the skip weights of its files, and so do we).

The replacement of layer m's MLP output is ``x̂_m + error_m`` with ``error_m = mlp_out_m − x̂_m`` held
constant: the splice is exact, and each feature is one node whatever layers it writes to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from workers.dictionaries.modules import Activation, DictionarySet

InputSite = Literal["resid_mid", "mlp_in", "normalized"]
INPUT_SITES = ("resid_mid", "mlp_in", "normalized")


@dataclass(frozen=True)
class CLTConfig:
    n_layers: int
    d_model: int
    d_dict: int  # features per source layer
    activation: Activation = "relu"
    k: int | None = None  # TopK only: k per source layer and position
    # where x_ℓ is read (module doc); "normalized" = TransformerLens' ln2.hook_normalized, before the
    # norm's gain and bias: only as read from a file, folded into "mlp_in" by ``fold_clt_input_norm``
    input_site: InputSite = "resid_mid"
    name: str = "clt"
    extra: dict = field(default_factory=dict)  # provenance (source format, hooks, train config)

    def __post_init__(self) -> None:
        if self.n_layers <= 0 or self.d_model <= 0 or self.d_dict <= 0:
            raise ValueError(f"a CLT needs positive n_layers, d_model, d_dict; got {self.n_layers}, "
                             f"{self.d_model}, {self.d_dict}")
        if self.activation == "topk" and (self.k is None or self.k <= 0):
            raise ValueError("activation 'topk' needs a positive k")
        if self.input_site not in INPUT_SITES:
            raise ValueError(f"input_site {self.input_site!r} is not one of {list(INPUT_SITES)}")

    @property
    def kind(self) -> str:
        return "clt"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CLTConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CLT config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def layer_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """Canonical tensors of source layer ``layer`` (what one native file holds) and their shapes."""
        shapes: dict[str, tuple[int, ...]] = {
            "W_enc": (self.d_dict, self.d_model),
            "b_enc": (self.d_dict,),
            "W_dec": (self.d_dict, self.n_layers - layer, self.d_model),
            "b_dec": (self.d_model,),  # the bias of OUTPUT layer ``layer``
        }
        if self.activation == "jumprelu":
            shapes["threshold"] = (self.d_dict,)
        return shapes


class CrossLayerTranscoder(nn.Module):
    """A CLT in canonical form (module doc). Feature f of source layer ℓ is one node."""

    def __init__(self, cfg: CLTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        L, F, d = cfg.n_layers, cfg.d_dict, cfg.d_model
        self.W_enc = nn.Parameter(torch.zeros(L, F, d))
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(F, L - i, d)) for i in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(L, F))
        else:
            self.register_parameter("threshold", None)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    # -- per source layer ------------------------------------------------------------------------
    def pre_activation(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x_ℓ [..., d_model] -> [..., d_dict]"""
        return x @ self.W_enc[layer].T + self.b_enc[layer]

    def gate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """Boolean mask of active features of source layer ``layer`` [..., d_dict]. Frozen by the engine."""
        if self.cfg.activation == "relu":
            return pre > 0
        if self.cfg.activation == "jumprelu":
            assert self.threshold is not None
            return pre > self.threshold[layer]
        k = min(int(self.cfg.k), pre.shape[-1])  # type: ignore[arg-type]
        idx = pre.topk(k, dim=-1).indices
        return torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, idx, True) & (pre > 0)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x_ℓ [..., d_model] -> activations a_ℓ [..., d_dict]"""
        pre = self.pre_activation(layer, x)
        return pre * self.gate(layer, pre)

    def decoder(self, source: int, target: int) -> torch.Tensor:
        """W_dec[source → target] [d_dict, d_model]: what source layer's features write into target's MLP output."""
        if not 0 <= source <= target < self.n_layers:
            raise ValueError(f"a CLT feature of layer {source} writes to layers {source}..{self.n_layers - 1}, "
                             f"not {target}")
        return self.W_dec[source][:, target - source]

    def decode(self, acts: list[torch.Tensor]) -> torch.Tensor:
        """Activations per source layer (L tensors [..., d_dict]) -> reconstructions [L, ..., d_model]."""
        if len(acts) != self.n_layers:
            raise ValueError(f"decode needs activations of all {self.n_layers} source layers, got {len(acts)}")
        outs = []
        for m in range(self.n_layers):
            out = self.b_dec[m].expand(*acts[0].shape[:-1], self.cfg.d_model)
            for src in range(m + 1):
                out = out + acts[src] @ self.decoder(src, m)
            outs.append(out)
        return torch.stack(outs)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Inputs of every layer [L, ..., d_model] -> every MLP output's reconstruction [L, ..., d_model]."""
        if xs.shape[0] != self.n_layers:
            raise ValueError(f"forward needs the inputs of all {self.n_layers} layers stacked first, "
                             f"got shape {list(xs.shape)}")
        return self.decode([self.encode(i, xs[i]) for i in range(self.n_layers)])

    # -- construction and housekeeping -------------------------------------------------------------
    @classmethod
    def from_layer_tensors(cls, cfg: CLTConfig, layers: list[dict[str, torch.Tensor]],
                           sources: list[str] | None = None) -> CrossLayerTranscoder:
        """Build from canonical per-source-layer tensors (``CLTConfig.layer_shapes``), checking every name
        and shape; ``sources[i]`` names the file of layer i for error messages. Extra tensors are refused."""
        if len(layers) != cfg.n_layers:
            raise ValueError(f"CLT {cfg.name!r} has {cfg.n_layers} source layers; got tensors for {len(layers)}")
        clt = cls(cfg)
        for i, tensors in enumerate(layers):
            where = f" in {sources[i]}" if sources else f" of source layer {i}"
            expected = cfg.layer_shapes(i)
            missing = [k for k in expected if k not in tensors]
            if missing:
                raise ValueError(f"missing tensor(s) {missing}{where}: CLT {cfg.name!r} layer {i} needs "
                                 + ", ".join(f"{k} {list(v)}" for k, v in expected.items()))
            extra = sorted(set(tensors) - set(expected))
            if extra:
                raise ValueError(f"unexpected tensor(s) {extra}{where} for CLT {cfg.name!r} "
                                 f"(activation {cfg.activation!r})")
            for k, shape in expected.items():
                t = tensors[k]
                if tuple(t.shape) != shape:
                    raise ValueError(f"tensor {k!r}{where} has shape {list(t.shape)}; expected {list(shape)} "
                                     f"for CLT {cfg.name!r} layer {i} (n_layers={cfg.n_layers}, "
                                     f"d_model={cfg.d_model}, d_dict={cfg.d_dict})")
            with torch.no_grad():
                clt.W_enc[i].copy_(tensors["W_enc"])
                clt.b_enc[i].copy_(tensors["b_enc"])
                clt.W_dec[i].copy_(tensors["W_dec"])
                clt.b_dec[i].copy_(tensors["b_dec"])
                if clt.threshold is not None:
                    clt.threshold[i].copy_(tensors["threshold"])
        return clt

    def layer_tensors(self, layer: int) -> dict[str, torch.Tensor]:
        """Canonical tensors of one source layer (detached, contiguous, CPU), as the native format stores them."""
        t = {"W_enc": self.W_enc[layer], "b_enc": self.b_enc[layer], "W_dec": self.W_dec[layer],
             "b_dec": self.b_dec[layer]}
        if self.threshold is not None:
            t["threshold"] = self.threshold[layer]
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    @torch.no_grad()
    def init_weights_(self, generator: torch.Generator | None = None) -> CrossLayerTranscoder:
        """Training initialisation: random decoder vectors of norm 1/√(L−ℓ) per (feature, target) (so a
        feature's total decoder norm is 1), encoder rows = unit random directions, zero biases and thresholds."""
        L = self.n_layers
        for i in range(L):
            W = torch.randn(self.cfg.d_dict, L - i, self.cfg.d_model, generator=generator)
            self.W_dec[i].copy_(W / W.norm(dim=-1, keepdim=True) / (L - i) ** 0.5)
        V = torch.randn(L, self.cfg.d_dict, self.cfg.d_model, generator=generator)
        self.W_enc.copy_(V / V.norm(dim=-1, keepdim=True))
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.threshold is not None:
            self.threshold.zero_()
        return self

    def content_hash(self) -> str:
        """sha256 over the config and every layer's tensor bytes."""
        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True, default=str).encode())
        for i in range(self.n_layers):
            for k, t in self.layer_tensors(i).items():
                h.update(f"{i}.{k}".encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class SourceLayerConfig:
    """What the engine reads of a per-site dictionary's config, for one source layer of a CLT."""

    name: str  # "L{ℓ}.mlp": the site whose input the features read (node ids, feature keys)
    layer: int
    d_in: int
    d_dict: int
    activation: Activation
    k: int | None
    kind: str = "clt"
    site: str = "mlp"
    skip: bool = False


class SourceLayer:
    """Source layer ℓ of a CLT, seen as the engine's dictionary at site (ℓ, "mlp"): the encoder stages of a
    ``Dictionary`` (``pre_activation``, ``gate``, ``encode``, ``W_enc``, ``b_enc``, ``threshold``) and

    - ``W_dec`` [d_dict, (L − ℓ)·d_model]: each feature's whole decoder, the writes to layers ℓ..L−1 side by
      side (a view of the CLT's ``W_dec[ℓ]``): a feature's edge into a row is ``a · W_dec[f] · g`` with g the
      row's gradients at the MLP outputs of layers ℓ..L−1 concatenated (``writes``);
    - ``b_dec`` [d_model]: the bias of output layer ℓ (added once, at this site);
    - no skip path and no ``decode``: a per-site reconstruction needs every source layer (``decoder``).
    """

    def __init__(self, clt: CrossLayerTranscoder, layer: int) -> None:
        c = clt.cfg
        self.clt, self.layer = clt, layer
        self.cfg = SourceLayerConfig(name=f"L{layer}.mlp", layer=layer, d_in=c.d_model, d_dict=c.d_dict,
                                     activation=c.activation, k=c.k)
        self.writes = list(range(layer, c.n_layers))  # output layers, in the order of W_dec's blocks
        self.W_skip = None

    @property
    def W_enc(self) -> torch.Tensor:
        return self.clt.W_enc[self.layer]

    @property
    def b_enc(self) -> torch.Tensor:
        return self.clt.b_enc[self.layer]

    @property
    def threshold(self) -> torch.Tensor | None:
        return None if self.clt.threshold is None else self.clt.threshold[self.layer]

    @property
    def W_dec(self) -> torch.Tensor:
        return self.clt.W_dec[self.layer].flatten(1)

    @property
    def b_dec(self) -> torch.Tensor:
        return self.clt.b_dec[self.layer]

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.clt.pre_activation(self.layer, x)

    def gate(self, pre: torch.Tensor) -> torch.Tensor:
        return self.clt.gate(self.layer, pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.clt.encode(self.layer, x)

    def skip_out(self, x: torch.Tensor) -> None:
        return None

    def split_writes(self, v: torch.Tensor) -> dict[int, torch.Tensor]:
        """[..., (L − ℓ)·d_model] (a vector in ``W_dec``'s space) -> {output layer m: [..., d_model]}."""
        d = self.clt.cfg.d_model
        return {m: v[..., j * d:(j + 1) * d] for j, m in enumerate(self.writes)}


@dataclass
class CLTDictionarySet(DictionarySet):
    """A dictionary set whose MLPs are replaced by one cross-layer transcoder.

    ``dictionaries`` may still hold attention SAEs (site ``attn``); it may not hold per-layer transcoders
    (site ``mlp``), which would replace the same MLP outputs twice."""

    clt: CrossLayerTranscoder | None = None

    def __post_init__(self) -> None:
        if self.clt is None:
            raise ValueError("a CLTDictionarySet needs its cross-layer transcoder (clt=...)")
        both = sorted(k for k in self.dictionaries if k[1] == "mlp")
        if both:
            raise ValueError(f"per-layer transcoders at {both} and a cross-layer transcoder would both replace "
                             "those MLP outputs; keep one of them")

    def __len__(self) -> int:
        """The number of sites the set replaces, as for a per-site set (one dictionary per (layer, site)):
        its attention SAEs plus one per CLT source layer, each the dictionary of its MLP site
        (``SourceLayer``, ``Linearised.site_dictionary``). Iteration still yields only the per-site members
        (``dictionaries``); the CLT is ``clt``."""
        assert self.clt is not None
        return len(self.dictionaries) + self.clt.n_layers

    def content_hash(self) -> str:
        """sha256 over the per-site members' hash and the CLT's."""
        assert self.clt is not None
        h = hashlib.sha256(super().content_hash().encode())
        h.update(b"clt")
        h.update(self.clt.content_hash().encode())
        return h.hexdigest()


def clt_of(ds: DictionarySet) -> CrossLayerTranscoder | None:
    """The set's cross-layer transcoder, or None for a per-site set."""
    return getattr(ds, "clt", None)
