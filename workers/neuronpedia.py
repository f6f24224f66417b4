"""Neuronpedia graph JSON (schema_version 1): the one exporter, used by the engine's ``Graph.to_neuronpedia``
and the API's ``GET /graphs/{id}/circuit?format=neuronpedia`` (``service/query/circuits.py``). Torch-free.

The models below (``Neuronpedia*``) are circuit-tracer 0.5.0's ``circuit_tracer/frontend/graph_models.py``
(``Metadata``, ``QParams``, ``Node``, ``Model``: the JSON its ``create_graph_files`` writes and Neuronpedia's
graph upload reads), with our additions as optional fields (``metadata.info``, ``metadata.pruning_settings``). Validating
through them makes a malformed export an error here, not on upload; ``tests/query/test_neuronpedia.py`` also
validates the output with circuit-tracer's own ``Model`` in its venv.

Node fields, by store kind (``workers/vocabulary/kinds.py``), following circuit-tracer's ``Node`` constructors:

| kind | ``feature`` | ``layer`` | ``feature_type`` |
|---|---|---|---|
| feature | the dictionary index | its layer | ``cross layer transcoder`` |
| error, unexpanded | -1 | its layer | ``mlp reconstruction error`` (an unexpanded-features leaf is drawn like an error node: a leaf carrying its value) |
| embedding, pos_embedding | the position | ``E`` | ``embedding`` |
| logit | the vocabulary index | ``n_layers`` | ``logit`` |
| target (logit difference, direction ...) | -1 (no vocabulary index) | ``n_layers`` | ``logit`` |
| bias | -1 | its layer (-1: all) | ``bias`` |

``ctx_idx`` is the node's position (0 for a node without one: bias). ``is_target_logit``: a logit or target node
that is one of the graph's targets. ``clerp``: the feature's label, else its feature key, else the token, else
the node id (``unexpanded features <id>`` for a leaf of unexpanded features).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from workers.vocabulary import ids
from workers.vocabulary.kinds import OUTPUT_KINDS, TOKEN_KINDS

SCHEMA_VERSION = 1

FEATURE_TYPE: dict[str, str] = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "unexpanded": "mlp reconstruction error",
    "embedding": "embedding",
    "pos_embedding": "embedding",
    "logit": "logit",
    "target": "logit",
    "bias": "bias",
}


class NeuronpediaMetadata(BaseModel):
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = SCHEMA_VERSION
    info: dict | None = None  # ours: generator, provenance / graph and corpus ids
    pruning_settings: dict | None = None  # ours: the read-time pruning of an API export


class NeuronpediaQParams(BaseModel):
    pinnedIds: list[str] = []
    supernodes: list[list[str]] = []
    linkType: str = "both"
    clickedId: str = ""
    sg_pos: str = ""


class NeuronpediaNode(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class NeuronpediaLink(BaseModel):
    source: str
    target: str
    weight: float


class NeuronpediaGraph(BaseModel):
    """The whole document (circuit-tracer's ``Model``; its ``links`` are plain dicts of these fields)."""

    metadata: NeuronpediaMetadata
    qParams: NeuronpediaQParams
    nodes: list[NeuronpediaNode]
    links: list[NeuronpediaLink]


def _feature(kind: str, n: Mapping) -> int:
    if kind == "feature":
        return int(n["feature"])
    if kind in TOKEN_KINDS:
        return int(n["pos"])
    if kind == "logit":
        token = ids.parse(n["node_id"]).token
        return -1 if token is None else token
    return -1


def _clerp(kind: str, n: Mapping) -> str:
    name = n.get("label") or n.get("fkey") or n.get("token") or n["node_id"]
    return f"unexpanded features {name}" if kind == "unexpanded" else str(name)


def node(n: Mapping, n_layers: int, targets: Mapping[str, float | None] | None) -> NeuronpediaNode:
    """One node. ``n``: a node in the store's vocabulary (node_id, kind, layer, pos, feature, activation,
    influence; optionally label, fkey, token). ``targets``: the graph's targets (node id → token probability),
    or None when unknown (every logit / target node then counts as a target)."""
    kind = n["kind"]
    if kind in TOKEN_KINDS:
        layer = "E"
    elif kind in OUTPUT_KINDS:
        layer = str(n_layers)
    else:
        layer = str(n["layer"] if n.get("layer") is not None else -1)
    pos = n.get("pos")
    is_target = kind in OUTPUT_KINDS and (targets is None or n["node_id"] in targets)
    return NeuronpediaNode(
        node_id=n["node_id"], jsNodeId=n["node_id"], feature=_feature(kind, n), layer=layer,
        ctx_idx=int(pos) if pos is not None and pos >= 0 else 0,
        feature_type=FEATURE_TYPE[kind],
        token_prob=float((targets or {}).get(n["node_id"]) or 0.0),
        is_target_logit=is_target,
        influence=None if n.get("influence") is None else float(n["influence"]),
        activation=float(n["activation"]) if kind == "feature" and n.get("activation") is not None else None,
        clerp=_clerp(kind, n),
    )


def transcoder_list(dictionary_set: str, dictionaries: Iterable[str]) -> list[str]:
    """``metadata.transcoder_list``: the dictionaries the exported features come from, as the prefix of their
    feature keys (``{dictionary_set}/{dictionary}``, ``workers/vocabulary/ids.py``), sorted."""
    return sorted({f"{dictionary_set}/{d}" for d in dictionaries})


def export(nodes: Iterable[Mapping], links: Iterable[tuple[str, str, float]], *, slug: str, scan: str,
           prompt: str, prompt_tokens: list[str], n_layers: int, targets: Mapping[str, float | None] | None,
           transcoder_list: list[str], node_threshold: float | None = None, clicked: str = "",
           info: dict | None = None, pruning_settings: dict | None = None) -> dict:
    """The Neuronpedia graph JSON of ``nodes`` (store vocabulary, see ``node``) and ``links`` (source id,
    target id, weight), validated against the models above."""
    doc = NeuronpediaGraph(
        metadata=NeuronpediaMetadata(slug=slug, scan=scan, transcoder_list=transcoder_list,
                                     prompt_tokens=prompt_tokens, prompt=prompt, node_threshold=node_threshold,
                                     info=info, pruning_settings=pruning_settings),
        qParams=NeuronpediaQParams(clickedId=clicked),
        nodes=[node(n, n_layers, targets) for n in nodes],
        links=[NeuronpediaLink(source=s, target=t, weight=w) for s, t, w in links],
    )
    return doc.model_dump(mode="json", exclude_none=False)
