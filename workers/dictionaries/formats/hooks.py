"""Which (layer, site) an ecosystem's hook name means, and how to adapt dictionaries that read a
normalised-but-not-yet-scaled MLP input.

Supported hook names (TransformerLens spelling, as SAELens, circuit-tracer and lm-saes use them; the
``blocks.{i}.`` prefix may be absent where the format gives the layer separately):

=================================  ======================  ==============================================
hook                               (layer, site), role     note
=================================  ======================  ==============================================
``blocks.{i}.hook_attn_out``       (i, "attn") in / out    SAE on the attention output
``blocks.{i}.mlp.hook_in``         (i, "mlp") in           the MLP module's input (after its norm)
``blocks.{i}.ln2.hook_normalized`` (i, "mlp") in           after centring/scaling, BEFORE the norm's gain
                                                           and bias: exact once ``fold_input_norm`` has
                                                           divided the gain out using the model
``blocks.{i}.hook_mlp_out``,       (i, "mlp") out          the MLP module's output
``blocks.{i}.mlp.hook_out``
=================================  ======================  ==============================================

Refused, with the reason: ``hook_resid_pre/mid/post`` (residual-stream dictionaries are not a splice
site here: our transcoders read the MLP input after its norm), ``attn.hook_z`` (per-head, before the
output projection: retrain on ``hook_attn_out``), ``mlp.hook_pre/post`` (MLP hidden units), anything else.

Cross-layer transcoders (``clt_input_site``) read ``hook_resid_mid`` (the residual stream entering the
pre-MLP norm, circuit-tracer's default; exact in the linearised model since the norm's scale is frozen),
``mlp.hook_in`` or ``ln2.hook_normalized`` (folded by ``fold_clt_input_norm``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from workers.dictionaries.crosslayer.module import CrossLayerTranscoder, InputSite
from workers.dictionaries.modules import Dictionary, SiteName
from workers.models.sites import blocks

InputSpace = Literal["site", "normalized"]


@dataclass(frozen=True)
class HookSite:
    layer: int
    site: SiteName
    # "site": the tensor our site provides; "normalized": ln2.hook_normalized (needs fold_input_norm)
    space: InputSpace = "site"


_REFUSED = {
    "hook_resid_pre": "a residual-stream SAE is not a splice site here (sites are attention outputs and MLPs)",
    "hook_resid_mid": "it reads the residual before the pre-MLP norm; our per-layer transcoders read the MLP "
    "input after the norm (use ln2.hook_normalized or mlp.hook_in; cross-layer transcoders may read it)",
    "hook_resid_post": "a residual-stream SAE is not a splice site here (sites are attention outputs and MLPs)",
    "attn.hook_z": "hook_z is per head and before the output projection; train the SAE on hook_attn_out",
    "mlp.hook_pre": "that is the MLP's hidden pre-activation, not its input or output",
    "mlp.hook_post": "that is the MLP's hidden activation, not its input or output",
}

_HOOK_RE = re.compile(r"^(?:blocks\.(\d+)\.)?(.+)$")


def parse_hook(name: str, role: Literal["in", "out"], layer: int | None = None) -> HookSite:
    """Map a hook name to our (layer, site). ``layer`` is used when the name has no ``blocks.{i}.`` prefix
    (circuit-tracer's config gives the layer by file). Raises ValueError naming the hook and the reason."""
    m = _HOOK_RE.match(name.strip())
    if not m:
        raise ValueError(f"empty hook name for the {role}put side")
    if m.group(1) is not None:
        layer = int(m.group(1))
    if layer is None:
        raise ValueError(f"hook {name!r} names no layer (expected blocks.<i>.<hook>)")
    hook = m.group(2)
    if hook in _REFUSED:
        raise ValueError(f"hook {name!r} is not supported: {_REFUSED[hook]}")
    if hook == "hook_attn_out":
        return HookSite(layer, "attn")
    if role == "in" and hook == "mlp.hook_in":
        return HookSite(layer, "mlp")
    if role == "in" and hook == "ln2.hook_normalized":
        return HookSite(layer, "mlp", "normalized")
    if role == "out" and hook in ("hook_mlp_out", "mlp.hook_out"):
        return HookSite(layer, "mlp")
    raise ValueError(
        f"hook {name!r} is not supported as the {role}put of a dictionary: supported are "
        "blocks.<i>.hook_attn_out (SAE), blocks.<i>.mlp.hook_in or blocks.<i>.ln2.hook_normalized (transcoder "
        "input), blocks.<i>.hook_mlp_out or blocks.<i>.mlp.hook_out (transcoder output)"
    )


def pre_mlp_norm_module(block: nn.Module) -> nn.Module:
    """The norm in front of a block's MLP, for the usual HF layouts: GPT-2 ``ln_2``, Gemma 2/3
    ``pre_feedforward_layernorm``, Llama/Qwen/Mistral/NeoX ``post_attention_layernorm``. Its input is
    the residual stream TransformerLens calls ``hook_resid_mid``."""
    for attr in ("ln_2", "pre_feedforward_layernorm", "post_attention_layernorm"):
        norm = getattr(block, attr, None)
        if norm is not None:
            return norm
    raise ValueError(f"cannot find the pre-MLP norm of {type(block).__name__}: expected ln_2, "
                     "pre_feedforward_layernorm or post_attention_layernorm")


def pre_mlp_norm(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(gain [d_model], bias [d_model] or None) of the norm in front of a block's MLP
    (``pre_mlp_norm_module``); Gemma's gain is 1 + weight."""
    norm = pre_mlp_norm_module(block)
    weight = norm.weight.detach().float()
    # Gemma's RMSNorm multiplies by (1 + weight); the others by weight.
    gain = 1.0 + weight if "Gemma" in type(norm).__name__ else weight
    bias = getattr(norm, "bias", None)
    return gain, None if bias is None else bias.detach().float()


def _fold_gain(W_enc: torch.Tensor, b_enc: torch.Tensor, layer: int, model: nn.Module, name: str) -> None:
    """Rewrite an encoder reading n = (h − β)/γ to read h (in place): W' = W / γ, b' = b − W'·β."""
    gain, bias = pre_mlp_norm(blocks(model)[layer].module)
    if gain.shape != (W_enc.shape[-1],):
        raise ValueError(f"pre-MLP norm of layer {layer} has {gain.numel()} features; dictionary "
                         f"{name!r} reads {W_enc.shape[-1]}")
    if bool((gain == 0).any()):
        raise ValueError(f"pre-MLP norm of layer {layer} has zero gain entries; cannot fold exactly")
    W_enc.div_(gain[None, :])
    if bias is not None:
        b_enc.sub_(W_enc @ bias)


@torch.no_grad()
def fold_input_norm(d: Dictionary, model: nn.Module) -> None:
    """Make a transcoder that reads ``ln2.hook_normalized`` (n) read our site's MLP input h = n·γ + β.

    n = (h − β)/γ, so  W_enc' = W_enc / γ,  b_enc' = b_enc − W_enc'·β,  and the same for the skip path
    (W_skip' = W_skip / γ, b_dec' = b_dec − W_skip'·β). Exact whenever γ has no zero entry.
    Marks ``cfg.extra["input_space"] = "site"`` afterwards, so folding twice is refused.
    """
    if d.cfg.extra.get("input_space", "site") != "normalized":
        raise ValueError(f"dictionary {d.cfg.name!r} already reads the site input; nothing to fold")
    _fold_gain(d.W_enc, d.b_enc, d.cfg.layer, model, d.cfg.name)
    if d.W_skip is not None:
        _fold_gain(d.W_skip, d.b_dec, d.cfg.layer, model, d.cfg.name)
    d.cfg.extra["input_space"] = "site"


def clt_input_site(hook: str) -> InputSite:
    """A cross-layer transcoder's ``feature_input_hook`` (no ``blocks.{i}.`` prefix) -> its input site."""
    name = re.sub(r"^blocks\.\d+\.", "", hook.strip())
    sites: dict[str, InputSite] = {"hook_resid_mid": "resid_mid", "mlp.hook_in": "mlp_in",
                                   "ln2.hook_normalized": "normalized"}
    if name not in sites:
        raise ValueError(f"feature_input_hook {hook!r} is not supported for a cross-layer transcoder: supported "
                         f"are {sorted(sites)} (the residual stream before the pre-MLP norm, or the MLP input)")
    return sites[name]


def clt_output_hook_ok(hook: str) -> bool:
    return re.sub(r"^blocks\.\d+\.", "", hook.strip()) in ("hook_mlp_out", "mlp.hook_out")


@torch.no_grad()
def fold_clt_input_norm(clt: CrossLayerTranscoder, model: nn.Module) -> CrossLayerTranscoder:
    """A CLT reading ``ln2.hook_normalized`` -> the same CLT reading the MLP input (``mlp_in``), per source
    layer as ``fold_input_norm``. Returns a new module (the config is frozen); the input is unchanged."""
    if clt.cfg.input_site != "normalized":
        raise ValueError(f"CLT {clt.cfg.name!r} reads {clt.cfg.input_site!r}; nothing to fold")
    cfg = type(clt.cfg).from_dict({**clt.cfg.to_dict(), "input_site": "mlp_in"})
    out = type(clt).from_layer_tensors(cfg, [clt.layer_tensors(i) for i in range(clt.n_layers)])
    for i in range(clt.n_layers):
        _fold_gain(out.W_enc[i], out.b_enc[i], i, model, clt.cfg.name)
    return out
