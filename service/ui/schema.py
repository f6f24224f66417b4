"""What the viewer needs to know about the vocabulary, served as ``GET /ui/schema.json``: node kinds (with
their engine names, Neo4j labels, colours, shapes and layout rows), sites, job states and pruning defaults.
The names come from ``workers/vocabulary``; the colours and shapes are the viewer's own (this is their only
home: the canvas, the SVG export and the legend all read them from here)."""

from __future__ import annotations

from workers.vocabulary import defaults, kinds, tensors

# store kind -> (colour, shape); shapes: circle, square (leaves that carry their value), diamond (read-outs)
_LOOK: dict[str, tuple[str, str]] = {
    "feature": ("#5b6fb3", "circle"),
    "error": ("#9a9a9a", "square"),
    "unexpanded": ("#c9a0dc", "square"),
    "embedding": ("#2a9d8f", "square"),
    "pos_embedding": ("#2a9d8f", "square"),
    "bias": ("#b0b0b0", "square"),
    "logit": ("#e0a400", "diamond"),
    "target": ("#e76f51", "diamond"),
}
# edges: RGB by sign; a supernode (a group the reader makes in the viewer) is not a stored kind
EDGE_RGB = {"pos": [33, 102, 172], "neg": [200, 40, 40]}
SUPERNODE_COLOUR = "#8e44ad"


def _row(kind: str) -> str:
    """Layout row: "E" (the bottom row: token leaves and bias), "T" (the top row: read-outs), or "site"
    (the node's own (layer, site) row)."""
    if kind in kinds.TOKEN_KINDS or kind == "bias":
        return "E"
    if kind in kinds.OUTPUT_KINDS:
        return "T"
    return "site"


def ui_schema() -> dict:
    missing = set(kinds.STORE_KINDS) - _LOOK.keys()
    if missing:
        raise RuntimeError(f"no colour for node kinds {sorted(missing)} (service/ui/schema.py)")
    return {
        "kinds": {k: {"engine": kinds.ENGINE_KIND[k], "label": kinds.NEO4J_LABEL[k], "colour": _LOOK[k][0],
                      "shape": _LOOK[k][1], "row": _row(k), "token": k in kinds.TOKEN_KINDS}
                  for k in kinds.STORE_KINDS},
        "sites": list(tensors.SITES),
        "default_keep_kinds": list(kinds.DEFAULT_KEEP_KINDS),
        "job_states": list(defaults.JOB_STATES),
        "final_job_states": list(defaults.FINAL_JOB_STATES),
        "pruning": {"node_threshold": defaults.NODE_THRESHOLD, "edge_threshold": defaults.EDGE_THRESHOLD},
        "edge_rgb": EDGE_RGB,
        "supernode_colour": SUPERNODE_COLOUR,
    }
