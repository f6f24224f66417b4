"""Where dictionaries attach in a Hugging Face causal LM, for any architecture with the usual layout
(GPT-2: ``transformer.h[i].attn/.mlp``; Llama, Gemma 3, Qwen, Mistral: ``model.layers[i].self_attn/.mlp``).

Sites (see ``workers.dictionaries.modules``):
  - ``attn``: the attention block's output (first element of its return value), rewritten by an SAE.
  - ``mlp``: the MLP module; a transcoder reads its input (already normalised by the pre-MLP norm) and
    replaces its output.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Block:
    index: int
    module: nn.Module
    attn: nn.Module
    mlp: nn.Module


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks of a causal LM."""
    for path in ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers", "layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: expected one of "
        "transformer.h, model.layers, model.decoder.layers, gpt_neox.layers"
    )


def blocks(model: nn.Module) -> list[Block]:
    out = []
    for i, block in enumerate(decoder_blocks(model)):
        attn = getattr(block, "self_attn", None) or getattr(block, "attn", None) or getattr(block, "attention", None)
        mlp = getattr(block, "mlp", None) or getattr(block, "feed_forward", None)
        if attn is None or mlp is None:
            raise ValueError(f"block {i} of {type(model).__name__} has no recognisable attention/MLP submodule")
        out.append(Block(i, block, attn, mlp))
    return out


def site_module(model: nn.Module, layer: int, site: str) -> nn.Module:
    """The module whose output (``attn``) or input and output (``mlp``) a dictionary at this site uses."""
    bs = blocks(model)
    if not 0 <= layer < len(bs):
        raise ValueError(f"layer {layer} out of range: the model has {len(bs)} layers")
    if site == "attn":
        return bs[layer].attn
    if site == "mlp":
        return bs[layer].mlp
    raise ValueError(f"unknown site {site!r}: expected 'attn' or 'mlp'")
