"""Node kinds. The engine names them short (its node ids start with the kind: ``feat:L2.mlp:p5:f123``); the
store, the API and the viewer use the long names. This module is the one mapping between the two.

| engine | store / API | Neo4j label (besides :Node) | what |
|---|---|---|---|
| ``emb`` | ``embedding`` | ``Emb`` | token embedding at a position |
| ``pos`` | ``pos_embedding`` | ``Emb`` | learned positional embedding (GPT-2's wpe) |
| ``feat`` | ``feature`` | ``Feat`` | an active dictionary feature |
| ``err`` | ``error`` | ``Err`` | a site's reconstruction error at a position |
| ``unexp`` | ``unexpanded`` | ``Unexp`` | features a node budget left unexpanded at one (site, position), summed |
| ``bias`` | ``bias`` | ``Bias`` | bias terms (all, or one parameter group) |
| ``logit`` | ``logit`` | ``Logit`` | a token's logit |
| ``target`` | ``target`` | ``Logit`` | any other target (logit difference, direction ...) |
"""

from __future__ import annotations

from typing import Literal

NodeKind = Literal["emb", "pos", "feat", "err", "unexp", "bias", "logit", "target"]
KINDS: tuple[str, ...] = ("emb", "pos", "feat", "err", "unexp", "bias", "logit", "target")

# engine kind -> store kind
STORE_KIND: dict[str, str] = {
    "emb": "embedding",
    "pos": "pos_embedding",
    "feat": "feature",
    "err": "error",
    "unexp": "unexpanded",
    "bias": "bias",
    "logit": "logit",
    "target": "target",
}
ENGINE_KIND: dict[str, str] = {v: k for k, v in STORE_KIND.items()}
STORE_KINDS: tuple[str, ...] = tuple(STORE_KIND.values())

# store kind -> the Neo4j label each node gets besides :Node (DESIGN.md §3)
NEO4J_LABEL: dict[str, str] = {
    "feature": "Feat",
    "error": "Err",
    "unexpanded": "Unexp",
    "embedding": "Emb",
    "pos_embedding": "Emb",
    "logit": "Logit",
    "target": "Logit",
    "bias": "Bias",
}

# store kinds of the prompt's token leaves, and of the read-outs at the top of a circuit
TOKEN_KINDS: tuple[str, ...] = ("embedding", "pos_embedding")
OUTPUT_KINDS: tuple[str, ...] = ("logit", "target")
# kinds a circuit read from the store always keeps, whatever the thresholds (service/query/circuits.py)
DEFAULT_KEEP_KINDS: tuple[str, ...] = ("logit", "target", "embedding")
