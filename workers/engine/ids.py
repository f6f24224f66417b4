"""The one place that defines node ids. Every id starts with its kind, so ids of different kinds never
collide, and every field is labelled (``L`` layer, ``p`` position, ``f`` feature, ``t`` token), so ids of
the same kind never collide either (circuit-tracer's ``{layer}_{feat}_{pos}`` can).

    emb:p3                token embedding at position 3
    pos:p3                learned positional embedding at position 3 (GPT-2's wpe)
    feat:L2.mlp:p5:f123   feature 123 of the dictionary at (layer 2, site mlp), position 5
    err:L2.mlp:p5         reconstruction error of that site at position 5
    unexp:L2.mlp:p5       the active features of that site and position left outside a node budget, as one leaf
    bias:L0.attn          bias terms of one group (model biases of block 0's attention, ...); "bias:all" = total
    logit:p7:t42          logit of token 42 at position 7 (de-meaned unembedding)
    target:NAME           any other target (logit difference, direction, ...), named by the user
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["emb", "pos", "feat", "err", "unexp", "bias", "logit", "target"]
KINDS: tuple[str, ...] = ("emb", "pos", "feat", "err", "unexp", "bias", "logit", "target")


def site_name(layer: int, site: str) -> str:
    return f"L{layer}.{site}"


def emb_id(pos: int) -> str:
    return f"emb:p{pos}"


def pos_id(pos: int) -> str:
    return f"pos:p{pos}"


def feat_id(layer: int, site: str, pos: int, feature: int) -> str:
    return f"feat:{site_name(layer, site)}:p{pos}:f{feature}"


def err_id(layer: int, site: str, pos: int) -> str:
    return f"err:{site_name(layer, site)}:p{pos}"


def unexp_id(layer: int, site: str, pos: int) -> str:
    return f"unexp:{site_name(layer, site)}:p{pos}"


def bias_id(group: str) -> str:
    return f"bias:{group}"


def logit_id(pos: int, token: int) -> str:
    return f"logit:p{pos}:t{token}"


def target_id(name: str) -> str:
    if not re.fullmatch(r"[\w.\-+ |]+", name):
        raise ValueError(f"target name {name!r} may only contain letters, digits, spaces and _ . - + |")
    return f"target:{name}"


@dataclass(frozen=True)
class ParsedId:
    kind: str
    layer: int | None = None
    site: str | None = None
    pos: int | None = None
    feature: int | None = None
    token: int | None = None
    name: str | None = None


_PATTERNS = {
    "emb": re.compile(r"emb:p(\d+)"),
    "pos": re.compile(r"pos:p(\d+)"),
    "feat": re.compile(r"feat:L(\d+)\.(attn|mlp):p(\d+):f(\d+)"),
    "err": re.compile(r"err:L(\d+)\.(attn|mlp):p(\d+)"),
    "unexp": re.compile(r"unexp:L(\d+)\.(attn|mlp):p(\d+)"),
    "bias": re.compile(r"bias:(.+)"),
    "logit": re.compile(r"logit:p(\d+):t(\d+)"),
    "target": re.compile(r"target:(.+)"),
}


def parse(node_id: str) -> ParsedId:
    """Inverse of the constructors above; raises ValueError for anything else."""
    kind = node_id.split(":", 1)[0]
    pat = _PATTERNS.get(kind)
    m = pat.fullmatch(node_id) if pat else None
    if m is None:
        raise ValueError(f"not a node id: {node_id!r} (see workers/engine/ids.py for the format)")
    g = m.groups()
    if kind in ("emb", "pos"):
        return ParsedId(kind, pos=int(g[0]))
    if kind == "feat":
        return ParsedId(kind, layer=int(g[0]), site=g[1], pos=int(g[2]), feature=int(g[3]))
    if kind in ("err", "unexp"):
        return ParsedId(kind, layer=int(g[0]), site=g[1], pos=int(g[2]))
    if kind == "logit":
        return ParsedId(kind, pos=int(g[0]), token=int(g[1]))
    return ParsedId(kind, name=g[0])
