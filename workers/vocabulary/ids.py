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

In the store, a node instance is unique across graphs by its uid ``{graph_id}|{node_id}`` (``node_uid``), and a
dictionary feature's global identity is its key ``{dictionary_set}/{dictionary}#{index}`` (``feature_key``;
the dictionary is the site name, ``L2.mlp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workers.vocabulary.kinds import KINDS, NodeKind
from workers.vocabulary.tensors import SITES, site_name

__all__ = ["KINDS", "NodeKind", "ParsedId", "bias_id", "emb_id", "err_id", "feat_id", "feature_key", "logit_id",
           "node_uid", "parse", "pos_id", "site_name", "target_id", "unexp_id"]


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


_SITE = "|".join(SITES)
_PATTERNS = {
    "emb": re.compile(r"emb:p(\d+)"),
    "pos": re.compile(r"pos:p(\d+)"),
    "feat": re.compile(rf"feat:L(\d+)\.({_SITE}):p(\d+):f(\d+)"),
    "err": re.compile(rf"err:L(\d+)\.({_SITE}):p(\d+)"),
    "unexp": re.compile(rf"unexp:L(\d+)\.({_SITE}):p(\d+)"),
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
        raise ValueError(f"not a node id: {node_id!r} (see workers/vocabulary/ids.py for the format)")
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


def node_uid(graph_id: str, node_id: str) -> str:
    """Instance ids are unique across the database: the engine's node id is unique within a graph."""
    return f"{graph_id}|{node_id}"


def feature_key(dictionary_set: str, dictionary: str, index: int) -> str:
    """The global identity of a dictionary feature: one (:Feature) node per key, shared by all graphs."""
    return f"{dictionary_set}/{dictionary}#{index}"
