"""Linearisation of a Hugging Face causal LM with a dictionary set spliced in (DESIGN.md §2).

Two kinds of forward pass over the *unchanged* HF model, steered by hooks and by a custom attention
function registered in transformers' attention interface (so no model's forward is copied):

- ``trace``: the clean run. Records every attention pattern, every normalisation scale, every
  dictionary site's input, output, feature activations and reconstruction error, and the embeddings.
- ``frozen_forward``: the linearised run. Attention patterns are the recorded ones (constants), every
  norm applies its recorded scale (so it is affine in its input), every dictionary site outputs
  ``Σ a_s W_dec[s] + b_dec (+ x W_skipᵀ) + err`` with the activations ``a`` and error ``err`` held as
  constants, and MLPs without a transcoder output their clean value (a constant error node). The model is
  then an affine function of its leaves (embeddings, errors, feature activations, biases), and on the
  clean leaves it reproduces the clean forward exactly (the splice identity).

Readable tensors of a frozen run, each laid out ``[batch, pos, D]``:
  ``in:L{l}.{site}``  the dictionary's input at that site (a feature's pre-activation is
                       ``W_enc[f]·x + b_enc[f]``); for ``attn`` this is the attention output; for ``mlp``
                       under a CLT reading ``resid_mid``, the residual entering the pre-MLP norm
  ``resid:L{l}``      the residual stream after block l
  ``final``           the last hidden state after the final norm (the unembedding's input)
  ``q:L{l}``/``k:L{l}`` queries / keys (after rotary and QK-norm), heads flattened: ``[B, pos, h*hd]``
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from workers.dictionaries.crosslayer.module import SourceLayer, clt_of
from workers.dictionaries.formats.hooks import pre_mlp_norm_module
from workers.dictionaries.modules import Dictionary, DictionarySet
from workers.engine.norms import NormRecord, fit_norm, frozen_norm_output, is_norm
from workers.models import sites as model_sites
from workers.models.placement import Placement, place
from workers.vocabulary import tensors as tn

ATTN_IMPL = "atlas_frozen"

# The run the hooks and the attention function serve; one per thread (workers may run threads).
_state = threading.local()


def _active() -> _Run | None:
    return getattr(_state, "run", None)


# --------------------------------------------------------------------------------------------------
# Records of the clean run
# --------------------------------------------------------------------------------------------------
@dataclass
class SiteRecord:
    """One dictionary site of the clean run.

    x [pos, d_in] site input; out [pos, d_out] clean module output; sparse active features as parallel
    vectors pos_idx [n], feat_idx [n], acts [n] (a = pre · gate, gate frozen); pre [n] equal to acts for
    every activation function we support; err [pos, d_out] = out − x̂ (the whole output if no dictionary).
    """

    layer: int
    site: str
    dictionary: Dictionary | None
    x: torch.Tensor
    out: torch.Tensor
    pos_idx: torch.Tensor
    feat_idx: torch.Tensor
    acts: torch.Tensor
    err: torch.Tensor

    @property
    def key(self) -> tuple[int, str]:
        return (self.layer, self.site)

    @property
    def n_active(self) -> int:
        return int(self.acts.numel())


@dataclass
class AttnRecord:
    pattern: torch.Tensor  # [heads, q, k], softmax output of the clean run
    q: torch.Tensor  # [heads, q, hd]
    k: torch.Tensor  # [kv_heads, k, hd]
    scaling: float
    softcap: float | None


@dataclass
class Trace:
    """Everything the frozen forward holds constant, for one prompt (batch 1)."""

    input_ids: torch.Tensor  # [pos]
    logits: torch.Tensor  # [pos, vocab], clean (after any final softcap)
    final: torch.Tensor  # [pos, d_model], last hidden state after the final norm
    emb: torch.Tensor  # [pos, d_model] token embedding module output
    pos_emb: torch.Tensor | None  # [pos, d_model] learned positional embedding, if the model has one
    attn: dict[int, AttnRecord] = field(default_factory=dict)
    norms: dict[str, list[NormRecord]] = field(default_factory=dict)
    sites: dict[tuple[int, str], SiteRecord] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.input_ids.shape[0])

    def site_list(self) -> list[SiteRecord]:
        """Sites in forward order (layer, then attn before mlp)."""
        return [self.sites[k] for k in sorted(self.sites, key=site_order)]

    def nbytes(self) -> int:
        """Bytes of the tensors this record holds (each storage once; the sites' dictionaries, which belong to the
        loaded set, not counted): the engine README's memory term "trace"."""
        seen: set[int] = set()

        def walk(obj: object) -> int:
            if isinstance(obj, torch.Tensor):
                ptr = obj.untyped_storage().data_ptr()
                if ptr in seen:
                    return 0
                seen.add(ptr)
                return obj.untyped_storage().nbytes()
            if isinstance(obj, (Dictionary, nn.Module)):
                return 0
            if isinstance(obj, dict):
                return sum(walk(v) for v in obj.values())
            if isinstance(obj, (list, tuple)):
                return sum(walk(v) for v in obj)
            if hasattr(obj, "__dataclass_fields__"):
                return sum(walk(getattr(obj, name)) for name in obj.__dataclass_fields__)
            return 0

        return walk(self)


def site_order(key: tuple[int, str]) -> tuple[int, int]:
    return (key[0], tn.SITES.index(key[1]))


# --------------------------------------------------------------------------------------------------
# State of one pass
# --------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    mode: str  # "record" | "frozen" | "live"
    trace: Trace | None = None
    n_pos: int = 0
    batch: int = 1
    leaves: str = "clean"  # frozen: "clean" | "zero"
    # frozen: per site, the constant injected by features [B, P, d_out] (already includes edits)
    injections: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    err_scale: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # [B, P, 1]
    emb_scale: torch.Tensor | None = None  # [B, P, 1]
    pos_scale: torch.Tensor | None = None
    require_grad: bool = True
    # live mode: feature edits applied to the recomputed features, {site: [(pos, feat, value)]}, batch 1
    live_edits: dict[tuple[int, str], list[tuple[int, int, float]]] = field(default_factory=dict)
    # outputs
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    leaves_out: dict[str, torch.Tensor] = field(default_factory=dict)  # "emb", "pos", "delta:L1.mlp"
    record: Trace | None = None
    # frozen, hierarchical: features are computed from their (frozen-gate) pre-activations instead of
    # injected as constants, and pass gradient upstream through ``gate`` (see hierarchical.py)
    gate: object | None = None
    # frozen: cut gradient through fused query/key projections (patterns are frozen, so only values carry
    # gradient); a pure speed-up, off when queries/keys are targets (QK attribution)
    value_only: bool = False
    norm_calls: dict[str, int] = field(default_factory=dict)
    # a cross-layer transcoder's features per source layer, kept for the later layers they write to:
    # record / live: dense activations [..., pos, d_dict]; frozen with ``gate``: (positions, features, a [B, n])
    clt_acts: dict[int, object] = field(default_factory=dict)
    # record / live, a CLT reading ``resid_mid``: per layer, the residual entering its pre-MLP norm [1, P, d]
    clt_inputs: dict[int, torch.Tensor] = field(default_factory=dict)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, kv_heads, P, hd] -> [B, kv_heads*n_rep, P, hd] (grouped-query attention)."""
    if n_rep == 1:
        return x
    b, h, p, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, p, d).reshape(b, h * n_rep, p, d)


def _frozen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention function for transformers' interface. query [B, h, q, hd], key/value [B, kvh, k, hd];
    returns ([B, q, h, hd], pattern). Record mode computes eager attention and stores its pattern; frozen
    mode multiplies the values by the stored, detached pattern."""
    run = _active()
    if run is None:
        raise RuntimeError(
            f"attention implementation {ATTN_IMPL!r} is only usable inside workers.engine.linearise passes"
        )
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention sinks (s_aux) are not supported by the linearisation yet")
    layer = _layer_of(module)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    if run.mode == "frozen":
        assert run.trace is not None
        rec = run.trace.attn[layer]
        p = query.shape[2]
        pattern = rec.pattern[:, :p, :p].to(value.dtype)
        run.tensors[tn.queries(layer)] = query.transpose(1, 2).flatten(2)
        run.tensors[tn.keys(layer)] = key.transpose(1, 2).flatten(2)
        v = _repeat_kv(value, n_rep)  # [B, H, P, hd]
        # The pattern is shared by every batch row (and every vmapped gradient): per head, one
        # [B·hd, P] @ [P, P]ᵀ product (F.linear with the pattern as weight) is a far better GEMM, forward
        # and backward, than B·H small matmuls; under vmap the batch folds into its rows.
        vt = v.transpose(0, 1).transpose(-1, -2)  # [H, B, hd, P]
        heads = [nn.functional.linear(vt[h], pattern[h]) for h in range(vt.shape[0])]  # [B, hd, P] each
        return torch.stack(heads, dim=1).permute(0, 3, 1, 2).contiguous(), None  # [B, P, H, hd]
    # record / live: eager attention, in the model's own order of operations
    softcap = kwargs.get("softcap")
    scores = torch.matmul(query, _repeat_kv(key, n_rep).transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(pattern, _repeat_kv(value, n_rep))
    if run.mode == "record":
        assert run.record is not None
        run.record.attn[layer] = AttnRecord(
            pattern=pattern[0].detach(),
            q=query[0].detach(),
            k=key[0].detach(),
            scaling=float(scaling),
            softcap=None if softcap is None else float(softcap),
        )
    return out.transpose(1, 2).contiguous(), pattern


def _layer_of(module: nn.Module) -> int:
    layer = getattr(module, "_atlas_layer", None)
    if layer is None:
        layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(f"cannot tell which layer {type(module).__name__} belongs to")
    return int(layer)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTN_IMPL, _frozen_attention)
    # an additive float mask (causal, sliding windows, padding) exactly as eager attention gets it
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPL, eager_mask)


# --------------------------------------------------------------------------------------------------
# The linearised model
# --------------------------------------------------------------------------------------------------
class Linearised:
    """A HF causal LM plus a dictionary set, able to trace a prompt and to run frozen forwards.

    The model is put in eval mode; its weights are never modified.
    """

    def __init__(self, model: nn.Module, dictionaries: DictionarySet) -> None:
        _register_attention()
        self.model = model.eval()
        self.dictionaries = dictionaries
        self.blocks = model_sites.blocks(model)
        self.n_layers = len(self.blocks)
        for b in self.blocks:
            b.attn._atlas_layer = b.index  # type: ignore[attr-defined]
        for (layer, _site), d in dictionaries:
            if not 0 <= layer < self.n_layers:
                raise ValueError(f"dictionary {d.cfg.name} is for layer {layer}; the model has {self.n_layers}")
        # a cross-layer transcoder: each source layer is the dictionary of its MLP site (SourceLayer)
        self.clt = clt_of(dictionaries)
        self._clt_layers: dict[int, SourceLayer] = {}
        if self.clt is not None:
            if self.clt.n_layers != self.n_layers:
                raise ValueError(f"the cross-layer transcoder spans {self.clt.n_layers} layers; the model has "
                                 f"{self.n_layers}")
            if self.clt.cfg.input_site not in ("mlp_in", "resid_mid"):
                raise ValueError(f"the cross-layer transcoder reads {self.clt.cfg.input_site!r}; the engine splices "
                                 "CLTs that read the MLP input ('mlp_in') or the residual before the pre-MLP norm "
                                 "('resid_mid'); a file reading ln2.hook_normalized is folded into 'mlp_in' when "
                                 "loaded with model=")
            self._clt_layers = {i: SourceLayer(self.clt, i) for i in range(self.n_layers)}
        # a CLT reading ``resid_mid``: its features read the input of each block's pre-MLP norm (frozen in the
        # linearised model, so this is a linear site like the MLP input), caught by a pre-hook on that norm
        self._resid_reads: dict[int, nn.Module] = {}
        if self.clt is not None and self.clt.cfg.input_site == "resid_mid":
            self._resid_reads = {b.index: pre_mlp_norm_module(b.module) for b in self.blocks}
        self.base = model.base_model
        self.embed = model.get_input_embeddings()
        self.pos_embed = self._find_pos_embedding()
        out_emb = model.get_output_embeddings()
        if out_emb is None:
            raise ValueError(f"{type(model).__name__} has no output embedding (lm_head); need a causal LM")
        self.W_U: torch.Tensor = out_emb.weight  # [vocab, d_model]
        self.lm_bias: torch.Tensor | None = getattr(out_emb, "bias", None)
        self.norms = [(n, m) for n, m in model.named_modules() if is_norm(m)]
        self.d_model = int(self.W_U.shape[1])
        self.n_heads = int(getattr(model.config, "num_attention_heads", 0) or getattr(model.config, "n_head", 0))

    def _find_pos_embedding(self) -> nn.Embedding | None:
        for name in ("wpe", "embed_positions", "position_embeddings"):
            m = getattr(self.base, name, None)
            if isinstance(m, nn.Embedding):
                return m
        return None

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (ATLAS_DTYPE): traces and frozen forwards run in it; the adjoint in fp32."""
        return self.W_U.dtype

    def place(self, placement: Placement) -> Linearised:
        """Move the model and the dictionaries to ``placement``'s device and dtype (workers/models/placement.py).
        The content hashes a graph's provenance names are taken first: those of the weights as loaded."""
        self.content_hash()
        self.dictionary_hash()
        place(self.model, self.dictionaries, placement)
        out_emb = self.model.get_output_embeddings()
        self.W_U, self.lm_bias = out_emb.weight, getattr(out_emb, "bias", None)
        return self

    @property
    def reads_resid_mid(self) -> bool:
        """Whether ``in:L{l}.mlp`` is the residual entering the pre-MLP norm (a CLT reading ``resid_mid``)
        rather than the MLP's input."""
        return bool(self._resid_reads)

    def site_dictionary(self, layer: int, site: str) -> Dictionary | SourceLayer | None:
        """The dictionary at a site: the set's, or for an MLP the CLT's source layer (``SourceLayer``)."""
        if site == "mlp" and self._clt_layers:
            return self._clt_layers[layer]
        return self.dictionaries.get(layer, site)

    def dictionary_hash(self) -> str:
        """The dictionary set's content hash; cached (see :meth:`place`)."""
        h = getattr(self, "_dictionary_hash", None)
        if h is None:
            h = self._dictionary_hash = self.dictionaries.content_hash()
        return h

    # ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _installed(self, run: _Run) -> Iterator[None]:
        """Install hooks and the attention implementation for one pass; always restore."""
        handles: list = []
        patched: list[nn.Module] = []
        old_impl = self.model.config._attn_implementation
        _state.run = run
        try:
            self.model.set_attn_implementation(ATTN_IMPL)
            handles.append(self.embed.register_forward_hook(self._emb_hook("emb")))
            if self.pos_embed is not None:
                handles.append(self.pos_embed.register_forward_hook(self._emb_hook("pos")))
            for name, m in self.norms:
                if run.mode == "record":
                    handles.append(m.register_forward_hook(self._norm_record_hook(name)))
                elif run.mode == "frozen":
                    m.forward = self._frozen_norm_forward(name, m)  # type: ignore[method-assign]
                    patched.append(m)
            for layer, norm in self._resid_reads.items():
                handles.append(norm.register_forward_pre_hook(self._resid_read_hook(layer)))
            for b in self.blocks:
                handles.append(b.module.register_forward_hook(self._block_hook(b.index)))
                handles.append(b.attn.register_forward_hook(self._attn_site_hook(b.index)))
                if run.mode == "frozen":
                    b.mlp.forward = self._frozen_mlp_forward(b.index)  # type: ignore[method-assign]
                    patched.append(b.mlp)
                    fused = _fused_qkv(b.attn)
                    if run.value_only and fused is not None:
                        fused.forward = _value_only_forward(fused, b.attn)  # type: ignore[method-assign]
                        patched.append(fused)
                else:
                    handles.append(b.mlp.register_forward_hook(self._mlp_site_hook(b.index)))
            yield
        finally:
            for h in handles:
                h.remove()
            for m in patched:
                del m.forward
            self.model.set_attn_implementation(old_impl)
            _state.run = None

    # -- hooks ------------------------------------------------------------------------------------
    def _emb_hook(self, which: str):
        def hook(module, args, output):
            run = _active()
            if run is None:
                return None
            if run.mode == "record":
                assert run.record is not None
                if which == "emb":
                    run.record.emb = output[0].detach()
                else:
                    run.record.pos_emb = output[0].detach()
                return None
            if run.mode != "frozen":
                return None
            assert run.trace is not None
            clean = run.trace.emb if which == "emb" else run.trace.pos_emb
            assert clean is not None
            p = output.shape[-2]
            scale = run.emb_scale if which == "emb" else run.pos_scale
            base = clean[:p].to(output.dtype).expand(run.batch, p, clean.shape[-1])
            if run.leaves == "zero":
                base = torch.zeros_like(base)
            elif scale is not None:
                base = base * scale
            leaf = base.clone().requires_grad_(run.require_grad)
            run.leaves_out[which] = leaf
            return leaf

        return hook

    def _norm_record_hook(self, name: str):
        def hook(module, args, output):
            run = _active()
            if run is None or run.record is None:
                return None
            x = args[0] if args else None
            if x is None:
                raise RuntimeError(f"norm {name} was called without a positional input")
            run.record.norms.setdefault(name, []).append(fit_norm(module, x, output, name))
            return None

        return hook

    def _frozen_norm_forward(self, name: str, module: nn.Module):
        def forward(x, *args, **kwargs):
            run = _active()
            assert run is not None and run.trace is not None
            i = run.norm_calls.get(name, 0)
            run.norm_calls[name] = i + 1
            recs = run.trace.norms.get(name)
            if not recs or i >= len(recs):
                raise RuntimeError(f"norm {name} ran {i + 1} times in the frozen pass but was traced {len(recs or [])}")
            return frozen_norm_output(recs[i], module, x)

        return forward

    def _resid_read_hook(self, layer: int):
        """A CLT reading ``resid_mid``: keep the pre-MLP norm's input of ``layer``, the features' input (frozen:
        the readable ``in:L{layer}.mlp``, so rows flow back through the residual, not through the norm)."""
        def hook(module, args):
            run = _active()
            if run is None:
                return None
            if not args:
                raise RuntimeError(f"the pre-MLP norm of layer {layer} was called without a positional input")
            if run.mode == "frozen":
                run.tensors[tn.site_input(layer, "mlp")] = args[0]
            else:
                run.clt_inputs[layer] = args[0]
            return None

        return hook

    def _block_hook(self, layer: int):
        def hook(module, args, output):
            run = _active()
            if run is not None and run.mode == "frozen":
                h = output[0] if isinstance(output, tuple) else output
                run.tensors[tn.resid(layer)] = h
            return None

        return hook

    def _attn_site_hook(self, layer: int):
        def hook(module, args, output):
            run = _active()
            if run is None:
                return None
            out = output[0] if isinstance(output, tuple) else output
            d = self.dictionaries.get(layer, "attn")
            if run.mode == "record":
                if d is not None:
                    assert run.record is not None
                    run.record.sites[(layer, "attn")] = _site_record(layer, "attn", d, out[0], out[0])
                return None
            if run.mode == "live":
                if d is None:
                    return None
                new = _live_site_output(run, (layer, "attn"), d, out, out)
                return (new, *output[1:]) if isinstance(output, tuple) else new
            run.tensors[tn.site_input(layer, "attn")] = out
            if d is None:
                return None
            new = self._spliced(run, (layer, "attn"), d, out)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _mlp_site_hook(self, layer: int):
        def hook(module, args, output):
            run = _active()
            if run is None:
                return None
            x = run.clt_inputs[layer] if self._resid_reads else args[0]  # what the features read
            d = self.site_dictionary(layer, "mlp")
            if run.mode == "record":
                assert run.record is not None
                if isinstance(d, SourceLayer):
                    run.record.sites[(layer, "mlp")] = _clt_site_record(run, d, x[0], output[0])
                else:
                    run.record.sites[(layer, "mlp")] = _site_record(layer, "mlp", d, x[0], output[0])
                return None
            if run.mode == "live" and d is not None:
                return _live_site_output(run, (layer, "mlp"), d, x, output)
            return None

        return hook

    def _frozen_mlp_forward(self, layer: int):
        def forward(x, *args, **kwargs):
            run = _active()
            assert run is not None
            if not self._resid_reads:  # else the pre-MLP norm's pre-hook has set it
                run.tensors[tn.site_input(layer, "mlp")] = x
            d = self.site_dictionary(layer, "mlp")
            return self._spliced(run, (layer, "mlp"), d, x)

        return forward

    def _spliced(self, run: _Run, key: tuple[int, str], d: Dictionary | SourceLayer | None,
                 x: torch.Tensor) -> torch.Tensor:
        """Frozen site output [B, P, d_out]: features' constant injection + b_dec + skip(x) + error + δ.

        δ is a zero leaf whose gradient is ∂target/∂(site output), shared by every feature and the error
        node at this site (their edges are a_s W_dec[s]·δ.grad and err·δ.grad)."""
        assert run.trace is not None
        rec = run.trace.sites[key]
        p = x.shape[-2]
        err = rec.err[:p].to(x.dtype)
        if run.leaves == "zero":
            err = torch.zeros_like(err)
        elif key in run.err_scale:
            err = err * run.err_scale[key]
        out = err.expand(run.batch, p, err.shape[-1])
        if d is not None and run.gate is not None:
            # live features with frozen gates: a = pre for every active feature, gradient gated
            m = rec.pos_idx < p
            pi, fi = rec.pos_idx[m], rec.feat_idx[m]
            read = run.tensors[tn.site_input(*key)]  # x, or a resid_mid CLT's residual
            pre = (read[:, pi] * d.W_enc[fi]).sum(-1) + d.b_enc[fi]  # [B, n]
            a = run.gate(key, pre)  # type: ignore[operator]
            inj = torch.zeros(run.batch, p, out.shape[-1], dtype=out.dtype, device=out.device)
            if isinstance(d, SourceLayer):  # this layer's features and every earlier layer's write here
                run.clt_acts[key[0]] = (pi, fi, a)
                for src in range(key[0] + 1):
                    ps, fs, a_s = run.clt_acts[src]  # type: ignore[misc]
                    inj = inj.index_add(1, ps, a_s[..., None] * d.clt.decoder(src, key[0])[fs])
            else:
                inj = inj.index_add(1, pi, a[..., None] * d.W_dec[fi])
            out = out + inj + d.b_dec
            skip = d.skip_out(x)
            if skip is not None:
                out = out + skip
        elif d is not None:
            inj = run.injections[key]
            out = out + inj[:, :p] + d.b_dec
            skip = d.skip_out(x)
            if skip is not None:
                out = out + skip
        delta = torch.zeros(run.batch, p, out.shape[-1], dtype=out.dtype, device=out.device)
        delta.requires_grad_(run.require_grad)
        run.leaves_out[tn.site_delta(*key)] = delta
        return out + delta

    # ---------------------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 over the model's parameters and buffers (names, shapes, bytes); cached."""
        h = getattr(self, "_hash", None)
        if h is None:
            sha = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                sha.update(name.encode())
                sha.update(str(tuple(t.shape)).encode())
                sha.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            h = self._hash = sha.hexdigest()
        return h

    @torch.no_grad()
    def trace(self, input_ids: torch.Tensor, fold_first: bool = False) -> Trace:
        """Clean forward of one prompt ``input_ids [pos]``; records what the frozen passes hold constant.

        ``fold_first``: no feature nodes at position 0 (circuit-tracer zeroes the BOS position, an
        attention sink with huge, uninformative activations): their output joins that site's error node."""
        if input_ids.dim() != 1:
            raise ValueError(f"trace takes one prompt as a 1-D tensor of token ids, got shape {tuple(input_ids.shape)}")
        ids = input_ids.to(self.device)
        empty = torch.empty(0)
        rec = Trace(input_ids=ids.cpu(), logits=empty, final=empty, emb=empty, pos_emb=None)
        run = _Run(mode="record", record=rec)
        with self._installed(run):
            out = self.model(input_ids=ids[None], use_cache=False, output_hidden_states=True)
        rec.logits = out.logits[0].detach()
        rec.final = out.hidden_states[-1][0].detach()
        for layer in range(self.n_layers):
            if (layer, "mlp") not in rec.sites:
                raise RuntimeError(f"the MLP of layer {layer} did not run in the traced forward")
        missing = [k for k in self.dictionaries.dictionaries if k not in rec.sites]
        if missing:
            raise RuntimeError(f"dictionary sites {missing} were not reached in the traced forward")
        if fold_first:
            for sr in rec.sites.values():
                first = sr.pos_idx == 0
                if sr.dictionary is None or not bool(first.any()):
                    continue
                W = sr.dictionary.W_dec.detach()
                folded = (sr.acts[first, None] * W[sr.feat_idx[first]]).sum(0)
                if isinstance(sr.dictionary, SourceLayer):  # a CLT feature's writes join each layer's error
                    for m, part in sr.dictionary.split_writes(folded).items():
                        rec.sites[(m, "mlp")].err[0] += part
                else:
                    sr.err[0] += folded
                keep = ~first
                sr.pos_idx, sr.feat_idx, sr.acts = sr.pos_idx[keep], sr.feat_idx[keep], sr.acts[keep]
        return rec

    def injections(
        self, trace: Trace, batch: int = 1, edits: list[dict[tuple[int, str, int, int], float]] | None = None
    ) -> dict[tuple[int, str], torch.Tensor]:
        """Per site, Σ_s a_s W_dec[s] at each position: [batch, pos, d_out]. A CLT's features of source layer
        ℓ are computed in ``W_dec``'s side-by-side space and split into the MLP sites of layers ℓ..L−1.

        ``edits[b]`` maps (layer, site, pos, feature) -> new activation for batch row b (feature must be
        active in the trace)."""
        out: dict[tuple[int, str], torch.Tensor] = {}
        for key, rec in trace.sites.items():
            d = rec.dictionary
            if d is None:
                continue
            W = d.W_dec.detach()
            base = torch.zeros(trace.n_pos, W.shape[1], dtype=W.dtype, device=W.device)
            base.index_add_(0, rec.pos_idx, rec.acts[:, None] * W[rec.feat_idx])
            inj = base[None].expand(batch, -1, -1)
            if edits is not None:
                inj = inj.clone()
                for b, e in enumerate(edits):
                    for (layer, site, pos, f), value in e.items():
                        if (layer, site) != key:
                            continue
                        hit = ((rec.pos_idx == pos) & (rec.feat_idx == f)).nonzero()
                        if hit.numel() == 0:
                            raise ValueError(f"feature {f} at L{layer}.{site} p{pos} is not active in this prompt")
                        a = rec.acts[hit[0, 0]]
                        inj[b, pos] += (value - a) * W[f]
            if isinstance(d, SourceLayer):
                for m, part in d.split_writes(inj).items():
                    out[(m, "mlp")] = part if (m, "mlp") not in out else out[(m, "mlp")] + part
            else:
                out[key] = inj
        return out

    def frozen_forward(
        self,
        trace: Trace,
        n_pos: int | None = None,
        *,
        batch: int = 1,
        leaves: str = "clean",
        injections: dict[tuple[int, str], torch.Tensor] | None = None,
        err_scale: dict[tuple[int, str], torch.Tensor] | None = None,
        emb_scale: torch.Tensor | None = None,
        pos_scale: torch.Tensor | None = None,
        require_grad: bool = True,
        gate: object | None = None,
        value_only: bool = False,
    ) -> _Run:
        """The linearised forward on the first ``n_pos`` positions (the causal cone of targets < n_pos).

        ``leaves="zero"`` zeroes every embedding, error and feature leaf: what remains is the bias term.
        Scales ``[batch, n_pos, 1]`` multiply errors per site / embeddings per row (interventions).
        Returns the run: ``.tensors`` (readable tensors, see module doc) and ``.leaves_out``."""
        p = trace.n_pos if n_pos is None else int(n_pos)
        if injections is None:
            injections = self.injections(trace, batch)
        if leaves == "zero":
            injections = {k: torch.zeros_like(v) for k, v in injections.items()}
        run = _Run(
            mode="frozen",
            trace=trace,
            n_pos=p,
            batch=batch,
            leaves=leaves,
            injections=injections,
            err_scale=err_scale or {},
            emb_scale=emb_scale,
            pos_scale=pos_scale,
            require_grad=require_grad,
            gate=gate,
            value_only=value_only,
        )
        ids = trace.input_ids[:p].to(self.device)[None].expand(batch, p)
        with self._installed(run), torch.set_grad_enabled(require_grad):
            out = self.base(input_ids=ids, use_cache=False)
        run.tensors[tn.FINAL] = out.last_hidden_state
        return run

    @torch.no_grad()
    def live_forward(
        self,
        input_ids: torch.Tensor,
        edits: dict[tuple[int, str], list[tuple[int, int, float]]] | None = None,
        errors: Trace | None = None,
        return_final: bool = False,
    ) -> torch.Tensor:
        """The real (unfrozen) model with dictionaries spliced: each site recomputes its features from its
        live input, applies ``edits`` (site -> [(pos, feature, value)]), and adds the clean error of
        ``errors`` (so with no edits the output is the clean one). Returns logits [pos, vocab], or with
        ``return_final`` the last hidden state after the final norm [pos, d_model]."""
        if errors is None:
            errors = self.trace(input_ids)
        run = _Run(mode="live", trace=errors, live_edits=edits or {})
        with self._installed(run):
            out = self.model(input_ids=input_ids.to(self.device)[None], use_cache=False,
                             output_hidden_states=return_final)
        return out.hidden_states[-1][0] if return_final else out.logits[0]


def _fused_qkv(attn: nn.Module) -> nn.Module | None:
    """GPT-2's fused projection ``c_attn`` (Conv1D, output split as [q | k | v]), else None."""
    m = getattr(attn, "c_attn", None)
    if m is None or getattr(attn, "is_cross_attention", False) or type(m).__name__ != "Conv1D":
        return None
    return m


def _value_only_forward(proj: nn.Module, attn: nn.Module):
    """Conv1D forward whose q and k columns are computed from a detached input: the same values, but the
    backward only multiplies by the value block of the weight (a third of the work)."""
    d = int(attn.split_size)

    def forward(x: torch.Tensor) -> torch.Tensor:
        W, b = proj.weight, proj.bias  # W [d_in, 3d]
        qk = torch.addmm(b[: 2 * d], x.detach().reshape(-1, x.shape[-1]), W[:, : 2 * d])
        v = torch.addmm(b[2 * d :], x.reshape(-1, x.shape[-1]), W[:, 2 * d :])
        return torch.cat([qk, v], -1).reshape(*x.shape[:-1], 3 * d)

    return forward


def _site_record(layer: int, site: str, d: Dictionary | None, x: torch.Tensor, out: torch.Tensor) -> SiteRecord:
    """x [pos, d_in], out [pos, d_out] from the clean run."""
    x, out = x.detach(), out.detach()
    if d is None:
        z = torch.zeros(0, dtype=torch.long, device=x.device)
        return SiteRecord(layer, site, None, x, out, z, z, torch.zeros(0, dtype=x.dtype), out.clone())
    if d.cfg.d_in != x.shape[-1] or d.cfg.d_out != out.shape[-1]:
        raise ValueError(
            f"dictionary {d.cfg.name} expects d_in={d.cfg.d_in}, d_out={d.cfg.d_out}; the model's site has "
            f"{x.shape[-1]} -> {out.shape[-1]}"
        )
    pre = d.pre_activation(x)  # [pos, d_dict]
    gate = d.gate(pre)
    acts = pre * gate
    pos_idx, feat_idx = gate.nonzero(as_tuple=True)
    recon = decode_active(d, acts)
    skip = d.skip_out(x)
    if skip is not None:
        recon = recon + skip
    return SiteRecord(layer, site, d, x, out, pos_idx, feat_idx, acts[pos_idx, feat_idx], out - recon)


DECODE_CHUNK = 4096  # decoder rows gathered at a time by decode_active (10 MB at d_out 640)


def decode_active(d: Dictionary, acts: torch.Tensor) -> torch.Tensor:
    """``d.decode(acts)`` from the decoder rows of the nonzero activations only: acts [..., d_dict] -> [..., d_out].

    The dense ``acts @ W_dec`` reads every row of the decoder; this gathers ``W_dec[f]`` for the active f, a chunk
    at a time (``gather_decode``), so a lazily loaded dictionary (``load_dictionary_set(lazy=True)``) pages in only
    those rows and the gathered copy stays O(chunk · d_out)."""
    return gather_decode(d.W_dec, acts) + d.b_dec


def gather_decode(W: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``acts @ W`` from the rows of W of the nonzero activations, ``DECODE_CHUNK`` rows at a time: acts [..., F],
    W [F, d] (any strides: a CLT's ``decoder(source, target)`` view) -> [..., d] in acts' dtype. Summed in fp32 (a
    bf16 dictionary's rows too, as a matmul accumulates), position by position in feature order: equal to the dense
    product to round-off."""
    flat = acts.reshape(-1, acts.shape[-1])
    rows, feats = flat.nonzero(as_tuple=True)
    W = W.detach()
    out = torch.zeros(flat.shape[0], W.shape[1], dtype=torch.float32, device=acts.device)
    for i in range(0, len(rows), DECODE_CHUNK):
        r, f = rows[i:i + DECODE_CHUNK], feats[i:i + DECODE_CHUNK]
        out.index_add_(0, r, (flat[r, f, None] * W[f]).float())
    return out.to(acts.dtype).reshape(*acts.shape[:-1], W.shape[1])


def _clt_site_record(run: _Run, d: SourceLayer, x: torch.Tensor, out: torch.Tensor) -> SiteRecord:
    """The MLP site of layer ℓ under a CLT, clean run: source layer ℓ's features (from x [pos, d_model]) and
    err = out − (b_dec[ℓ] + Σ_{s ≤ ℓ} a_s W_dec[s → ℓ]), the earlier layers' activations kept in ``run``."""
    x, out = x.detach(), out.detach()
    layer = d.layer
    if d.cfg.d_in != x.shape[-1] or d.cfg.d_in != out.shape[-1]:
        raise ValueError(f"the cross-layer transcoder has d_model={d.cfg.d_in}; the model's MLP of layer {layer} "
                         f"has {x.shape[-1]} -> {out.shape[-1]}")
    pre = d.pre_activation(x)
    gate = d.gate(pre)
    acts = pre * gate
    run.clt_acts[layer] = acts
    pos_idx, feat_idx = gate.nonzero(as_tuple=True)
    return SiteRecord(layer, "mlp", d, x, out, pos_idx, feat_idx, acts[pos_idx, feat_idx], out - _clt_writes(run, d))


def _clt_writes(run: _Run, d: SourceLayer) -> torch.Tensor:
    """b_dec[ℓ] + Σ_{s ≤ ℓ} a_s W_dec[s → ℓ] from the dense activations of ``run.clt_acts``."""
    out = d.b_dec
    for src in range(d.layer + 1):  # gathered: a lazily loaded CLT pages in the active features' rows only
        out = out + gather_decode(d.clt.decoder(src, d.layer), run.clt_acts[src])  # type: ignore[arg-type]
    return out


def _live_site_output(
    run: _Run, key: tuple[int, str], d: Dictionary | SourceLayer, x: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Live (unfrozen) splice: features recomputed from the live input x [1, P, d_in] with gates live,
    edits applied, plus the clean error held constant (a CLT's layer adds its earlier layers' writes)."""
    acts = d.encode(x)
    for pos, f, value in run.live_edits.get(key, []):
        acts[:, pos, f] = value
    assert run.trace is not None
    if isinstance(d, SourceLayer):
        run.clt_acts[key[0]] = acts
        return _clt_writes(run, d) + run.trace.sites[key].err[None, : x.shape[1]]
    new = decode_active(d, acts)
    skip = d.skip_out(x)
    if skip is not None:
        new = new + skip
    return new + run.trace.sites[key].err[None, : x.shape[1]]
