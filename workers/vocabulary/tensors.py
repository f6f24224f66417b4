"""Dictionary sites and the names of a frozen run's readable tensors (``workers/engine/linearise.py``).

    in:L{l}.{site}      the dictionary's input at that site (a feature's pre-activation reads it);
                        for ``attn`` the attention output
    resid:L{l}          the residual stream after block l
    final               the last hidden state after the final norm (the unembedding's input)
    q:L{l} / k:L{l}     queries / keys of layer l (after rotary and QK-norm), heads flattened
    delta:L{l}.{site}   a site's output leaf (what the spliced dictionary adds), for gradients
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

SITES: tuple[str, str] = ("attn", "mlp")  # in forward order within a block
FINAL = "final"


def site_name(layer: int, site: str) -> str:
    """``L2.mlp``: a site, as in node ids and dictionary names."""
    return f"L{layer}.{site}"


def site_input(layer: int, site: str) -> str:
    return f"in:{site_name(layer, site)}"


def site_delta(layer: int, site: str) -> str:
    return f"delta:{site_name(layer, site)}"


def resid(layer: int) -> str:
    return f"resid:L{layer}"


def queries(layer: int) -> str:
    return f"q:L{layer}"


def keys(layer: int) -> str:
    return f"k:L{layer}"


@dataclass(frozen=True)
class TensorName:
    kind: str  # "in", "delta", "resid", "q", "k" or "final"
    layer: int | None = None
    site: str | None = None


_SITE = "|".join(SITES)
_TENSOR = re.compile(rf"(?:(?P<ks>in|delta):L(?P<ls>\d+)\.(?P<site>{_SITE})|(?P<kl>resid|q|k):L(?P<l>\d+)|final)")


@lru_cache(maxsize=4096)  # a run has a few dozen tensor names, parsed once per row
def parse_tensor(name: str) -> TensorName:
    """Inverse of the constructors above; raises ValueError for anything else."""
    m = _TENSOR.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown tensor {name!r} (see workers/vocabulary/tensors.py)")
    if m["ks"]:
        return TensorName(m["ks"], int(m["ls"]), m["site"])
    if m["kl"]:
        return TensorName(m["kl"], int(m["l"]))
    return TensorName(FINAL)
