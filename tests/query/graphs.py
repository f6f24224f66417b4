"""Small random attribution graphs (as GraphRecords) for the query tests, and brute-force references.

Weights, activations and influences are multiples of 1/8 drawn from a few values, so that ties are common
and every sum the database computes is exact in floating point (the reference compares with ==).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from itertools import permutations

from hypothesis import strategies as st

from workers.store.records import GraphRecord, NodeRow

WEIGHTS = [-1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 2.0]
ACTS = [0.25, 0.5, 1.0, 2.0]
INFLUENCES = [None, 0.0, 0.125, 0.25, 0.5]


@st.composite
def graph_specs(draw, n_graphs: int = 1):  # noqa: ANN001, ANN201
    """A list of ``n_graphs`` graph specs sharing a feature vocabulary (so features recur across graphs)."""
    specs = []
    for _ in range(n_graphs):
        n_pos = draw(st.integers(1, 3))
        nodes: list[NodeRow] = []
        for p in range(n_pos):
            nodes.append(NodeRow(f"emb:p{p}", "embedding", 0, p, activation=1.0, influence=draw(st.sampled_from(INFLUENCES)),
                                 token=draw(st.sampled_from(["the", "cat", "sat", "ß", "猫"]))))
        feats = draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, n_pos - 1), st.integers(0, 3)), max_size=7,
                              unique=True))
        for layer, p, f in feats:
            nodes.append(NodeRow(f"feat:L{layer}.mlp:p{p}:f{f}", "feature", layer, p, feature=f, dictionary=f"L{layer}.mlp",
                                 activation=draw(st.sampled_from(ACTS)), influence=draw(st.sampled_from(INFLUENCES))))
        if draw(st.booleans()):
            nodes.append(NodeRow(f"err:L0.mlp:p{n_pos - 1}", "error", 0, n_pos - 1, activation=0.5,
                                 influence=draw(st.sampled_from(INFLUENCES))))
        nodes.append(NodeRow(f"logit:p{n_pos - 1}:t7", "logit", 2, n_pos - 1, activation=1.0, influence=None))
        ids = [n.node_id for n in nodes]
        pairs = [(s, d) for s, d in permutations(ids, 2) if not s.startswith("logit") and not d.startswith("emb")]
        chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=min(len(pairs), 18))) if pairs else []
        ws = [draw(st.sampled_from(WEIGHTS)) for _ in chosen]
        specs.append((nodes, chosen, ws))
    return specs


def make_records(specs: list, corpus_id: str | None = None, dset: str | None = None) -> list[GraphRecord]:
    tag = uuid.uuid4().hex[:10]
    corpus_id = corpus_id or f"qc-{tag}"
    dset = dset or f"qd-{tag}"
    recs = []
    for i, (nodes, pairs, ws) in enumerate(specs):
        recs.append(GraphRecord(
            graph_id=f"qg-{tag}-{i}", prompt_id=f"qp-{tag}-{i}", corpus_id=corpus_id, dictionary_set=dset, model="m",
            nodes=nodes, edge_src=[s for s, _ in pairs], edge_dst=[d for _, d in pairs], edge_w=list(ws),
            provenance={"token_strings": [n.token for n in nodes if n.kind == "embedding"], "n_layers": 2},
        ))
    return recs


# -- brute-force references ----------------------------------------------------------------------------------


def ref_circuit(rec: GraphRecord, node_threshold: float, edge_threshold: float, max_nodes: int, max_edges: int,
                keep_kinds: tuple[str, ...], target: str | None) -> tuple[set[str], list[tuple[str, str, float]]]:
    keep = {n.node_id for n in rec.nodes if n.kind in keep_kinds}
    others = [n for n in rec.nodes if n.kind not in keep_kinds and (n.influence or 0.0) >= node_threshold]
    others.sort(key=lambda n: (-(n.influence or 0.0), n.node_id))
    keep |= {n.node_id for n in others[:max_nodes]}
    if target is not None:
        keep.add(target)
    edges = [(s, d, w) for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True)
             if s in keep and d in keep and abs(w) >= edge_threshold]
    edges.sort(key=lambda e: (-abs(e[2]), e[0], e[1]))
    edges = edges[:max_edges]
    if target is not None:
        cone = {target}
        changed = True
        while changed:
            changed = False
            for s, d, _ in edges:
                if d in cone and s not in cone:
                    cone.add(s)
                    changed = True
        keep = cone
        edges = [e for e in edges if e[0] in cone and e[1] in cone]
    return keep, edges


def ref_paths(edges: list[tuple[str, str, float]], source: str, target: str, max_hops: int, k: int) -> list[tuple]:
    """All simple paths of <= max_hops edges, top-k by |product| then node sequence."""
    out_edges = defaultdict(list)
    for s, d, w in edges:
        out_edges[s].append((d, w))
    found = []

    def dfs(path: list[str], ws: list[float]) -> None:
        if path[-1] == target and len(path) > 1:
            p = 1.0
            for w in ws:
                p *= w
            found.append((tuple(path), tuple(ws), p))
            return
        if len(ws) == max_hops:
            return
        for d, w in out_edges[path[-1]]:
            if d not in path:
                dfs(path + [d], ws + [w])

    dfs([source], [])
    found.sort(key=lambda t: (-abs(t[2]), t[0]))
    return found[:k]


def ref_feature_sets(rec: GraphRecord, min_influence: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in rec.nodes:
        if n.kind == "feature" and (n.influence or 0.0) >= min_influence:
            fk = n.fkey(rec.dictionary_set)
            out[fk] = max(out.get(fk, float("-inf")), n.activation)
    return out


def ref_feature_edges(rec: GraphRecord, min_influence: float) -> dict[tuple[str, str], float]:
    by_id = {n.node_id: n for n in rec.nodes}
    out: dict[tuple[str, str], float] = defaultdict(float)
    for s, d, w in zip(rec.edge_src, rec.edge_dst, rec.edge_w, strict=True):
        a, b = by_id[s], by_id[d]
        if a.kind == b.kind == "feature" and (a.influence or 0.0) >= min_influence and (b.influence or 0.0) >= min_influence:
            out[(a.fkey(rec.dictionary_set), b.fkey(rec.dictionary_set))] += w
    return dict(out)


def registered_graph(driver, model_id: str, dset_id: str, prompt: str, database: str | None):  # noqa: ANN001, ANN201
    """(GraphRecord, Loaded): the engine's graph of ``prompt`` on a registered model and dictionary set (loaded
    as a worker loads them), as the pipeline would store it; write it with the ``store`` fixture."""
    import torch

    from workers.engine import attribute
    from workers.pipeline import registry
    from workers.pipeline.compute import ModelCache
    from workers.store.from_engine import graph_to_record

    loaded = ModelCache().get(registry.get_model(driver, model_id, database),
                              registry.get_dictionary_set(driver, dset_id, database))
    torch.set_num_threads(1)
    graph = attribute(loaded.lin, prompt, ["top"], tokenizer=loaded.tokenizer)
    tag = uuid.uuid4().hex[:8]
    rec = graph_to_record(graph, graph_id=f"rg-{tag}", prompt_id=f"rg-p-{tag}", corpus_id=f"rg-c-{tag}",
                          model=model_id, dictionary_set=dset_id)
    return rec, loaded
