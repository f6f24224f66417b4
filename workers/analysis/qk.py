"""QK pairs of a head for a stored graph, computed by a worker (analysis kind ``qk_pairs``).

Why a head attends where it does: with the clean run's norms frozen, the pre-softmax score
``s = scaling · q·k`` is bilinear in the query-side and key-side residuals, so it splits exactly into
(query node, key node) pairs plus three bias cross-terms (``workers/engine/qk.py``). The worker reloads the
graph's registered model and dictionary set, re-traces the stored prompt and rebuilds the direct-effect graph
for the prompt's own targets (``workers/analysis/recompute.py``), and decomposes either one chosen (layer, head, query position, key position) or the heads that
carry the graph's strongest cross-position (OV) edges (``circuit_heads``).

The result keeps the identity visible: ``score = Σ top pairs + other_pairs + Σ bias_terms`` (``total``; the
largest |pairs| first, the rest summed into ``other_pairs``), and says which nodes are in the stored graph.
"""

from __future__ import annotations

from neo4j import Driver

from workers.analysis.recompute import recompute_graph


def head_pairs(qk, top_k: int, stored: set[str], pattern: float, credit: float | None = None) -> dict:  # noqa: ANN001
    """One head's decomposition as JSON: the ``top_k`` largest |pairs|, the rest summed, the bias terms."""
    qi, ki, M = qk.pair_matrix()
    flat = M.double().flatten()
    k = min(int(top_k), flat.numel())
    top = flat.abs().topk(k).indices.tolist() if k else []
    ncol = M.shape[1]
    pairs = [{"query_node": qk.node_ids[int(qi[i // ncol])], "key_node": qk.node_ids[int(ki[i % ncol])],
              "contribution": float(flat[i])} for i in top]
    for p in pairs:
        p["query_in_graph"], p["key_in_graph"] = p["query_node"] in stored, p["key_node"] in stored
    all_pairs = float(flat.sum())
    listed = sum(p["contribution"] for p in pairs)
    bias = qk.bias_terms()
    # Each node's share with the other side summed (bias included): what a reader ranks nodes by.
    k_all = qk.K.double().sum(0) + qk.k_bias.double()
    q_all = qk.Q.double().sum(0) + qk.q_bias.double()
    q_side = (qk.scaling * qk.Q.double()[qi] @ k_all).tolist()
    k_side = (qk.scaling * qk.K.double()[ki] @ q_all).tolist()

    def ranked(idx, vals: list[float]) -> list[dict]:  # noqa: ANN001
        rows = sorted(zip(idx.tolist(), vals, strict=True), key=lambda r: -abs(r[1]))[:top_k]
        return [{"node_id": qk.node_ids[i], "contribution": v, "in_graph": qk.node_ids[i] in stored} for i, v in rows]

    return {
        "layer": qk.layer, "head": qk.head, "query_position": qk.q_pos, "key_position": qk.k_pos,
        "score": qk.score, "scaling": qk.scaling, "attention": pattern, "credit": credit,
        "pairs": pairs, "n_pairs": int(flat.numel()), "other_pairs": all_pairs - listed,
        "bias_terms": bias, "total": all_pairs + sum(bias.values()),
        "query_nodes": ranked(qi, q_side), "key_nodes": ranked(ki, k_side),
    }


def compute_qk_pairs(driver: Driver, graph_id: str, *, layer: int | None = None, head: int | None = None,
                     query_position: int | None = None, key_position: int | None = None, top_k: int = 20,
                     from_circuit: bool = False, top_k_heads: int = 3, top_edges: int = 50,
                     database: str | None = None) -> dict:
    """QK decomposition(s) of a stored graph's prompt; see the module docstring. ValueError / LookupError name
    the parameter that cannot be used (the analysis is then marked failed with that message)."""
    from workers.engine.qk import circuit_heads, qk_attribution

    rc = recompute_graph(driver, graph_id, database=database)
    lin, trace, g, prov, tokens = rc.loaded.lin, rc.trace, rc.graph, rc.provenance, rc.tokens
    n_layers, n_heads = int(lin.n_layers), int(trace.attn[min(trace.attn)].q.shape[0])
    stored = {r["n"] for r in driver.execute_query("MATCH (n:Node {graph_id: $g}) RETURN n.node_id AS n",
                                                   g=graph_id, database_=database).records}
    if from_circuit:
        chosen = [(lyr, h, qp, kp, cr) for lyr, h, qp, kp, cr in
                  circuit_heads(lin, trace, g, top_edges=int(top_edges), top_heads=int(top_k_heads))]
    else:
        if layer is None or head is None or query_position is None or key_position is None:
            raise ValueError("give layer, head, query_position and key_position, or from_circuit")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise ValueError(f"head {head} does not exist: layer {layer} has heads 0..{n_heads - 1}")
        chosen = [(layer, head, query_position, key_position, None)]
    heads = []
    for lyr, h, qp, kp, cr in chosen:
        qk = qk_attribution(lin, trace, g, lyr, h, qp, kp)
        pattern = float(trace.attn[lyr].pattern[h, qp, kp])
        heads.append(head_pairs(qk, top_k, stored, pattern, cr))
    return {"graph_id": graph_id, "from_circuit": bool(from_circuit), "n_positions": len(tokens),
            "n_layers": n_layers, "n_heads": n_heads, "token_strings": prov.get("token_strings"), "heads": heads}
