"""The node budget (README "Node budget"): at most ``max_feature_nodes`` active features become rows,
chosen in batches by their partial influence on the targets through the rows computed so far; the others
stay sources, summed per (site, position) into one ``unexp`` leaf, so every row still sums to its value."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from workers.engine.backward import edges
from workers.engine.bias import bias_contributions, read_rows
from workers.engine.csr import CSRWriter
from workers.engine.graph import Graph
from workers.engine.linearise import Linearised, Trace
from workers.engine.nodes import Layout, NodeTable, SiteColumns, assemble, feature_rows
from workers.engine.readout import site_rank
from workers.engine.targets import Target, tensor_site_bound
from workers.vocabulary import ids

if TYPE_CHECKING:
    from workers.engine.attribution import AttributionSettings


def budgeted_graph(
    lin: Linearised, trace: Trace, targets: list[Target], layout: Layout, settings: AttributionSettings,
    progress: Callable[[int, int], None] | None, provenance: dict | None, t0: float, t_nodes: float,
) -> Graph:
    """The graph under a node budget (README "Node budget"). ``nodes`` holds every active feature; rows are
    computed for the targets, then for batches of the features ranked by their influence on the targets
    through the rows computed so far, until ``max_feature_nodes`` features are rows. Rows are kept with an
    entry for every structurally possible source; at the end the features that never became rows are
    summed, per (site, position), into one ``unexp`` leaf (activation 1: its edge carries the value)."""
    nodes, index, row_targets, site_cols = layout.nodes, layout.index, layout.row_targets, layout.site_cols
    emb_cols, pos_cols, bias_cols = layout.emb_cols, layout.pos_cols, layout.bias_cols
    budget = int(settings.max_feature_nodes or 0)
    n_full = len(nodes.ids)
    grouped = settings.bias == "grouped"
    active = torch.zeros(n_full, dtype=torch.bool)  # features active in the trace (not inactive targets)
    for sc in site_cols:
        active[sc.feat_cols[sc.feat_cols >= 0]] = True
    is_bias = torch.zeros(n_full, dtype=torch.bool)
    is_bias[list(bias_cols.values())] = True
    weight = torch.zeros(n_full, dtype=torch.float64)
    for t in targets:
        weight[index[t.node_id]] = t.weight
    level = torch.full((n_full,), -1, dtype=torch.long)  # site rank of the tensor a row reads
    rowsum = torch.zeros(n_full, dtype=torch.float64)  # Σ |A[r, s]| over non-bias sources (pruning's Â)
    expanded = torch.zeros(n_full, dtype=torch.bool)
    value = torch.full((n_full,), float("nan"))
    # computed rows, per level: (row nodes, entries per row, values); their columns are rebuilt when needed
    # (``columns``), so a held entry costs 4 bytes, not 8 (README "Memory under a budget")
    stored: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    node_pos = torch.tensor(nodes.pos)
    reuse: dict = {}

    def columns(rn: torch.Tensor) -> torch.Tensor:
        return reuse["readout"].columns_of(node_pos[rn], level[rn])

    with torch.no_grad():
        clean = lin.frozen_forward(trace, require_grad=False)
    timings = {"nodes": t_nodes - t0, "bias": 0.0, "edges": 0.0, "ranking": 0.0}
    done = 0
    total = len(row_targets) + min(budget, int(active.sum()))

    def sink(rnodes: torch.Tensor, cnt: torch.Tensor, C: torch.Tensor, V: torch.Tensor) -> None:
        entry_row = rnodes.repeat_interleave(cnt)
        a = V.abs().double().masked_fill(is_bias[C.long()], 0.0)
        rowsum.index_add_(0, entry_row, a)
        if not stored and not torch.equal(columns(rnodes), C.long()):  # once: the rebuilt columns are the read-out's
            raise RuntimeError("budget: rebuilt columns differ from the read-out's (engine bug)")
        lv = level[rnodes]
        for L in lv.unique().tolist():  # kept per level: the ranking walks the levels top-down
            sel = lv == L
            keep = sel.repeat_interleave(cnt)
            stored.setdefault(L, []).append((rnodes[sel], cnt[sel], V[keep]))

    def compute(rows: list[Target]) -> None:
        nonlocal done
        tb = time.perf_counter()
        r = torch.tensor([index[t.node_id] for t in rows], dtype=torch.long)
        biases = bias_contributions(lin, trace, rows, grouped=grouped)
        with torch.no_grad():
            value[r] = read_rows(clean, rows)[0]
        level[r] = torch.tensor([site_rank(tensor_site_bound(t.tensor)) for t in rows])
        bias_c = torch.tensor([bias_cols[g] for g in biases], dtype=torch.long)
        bias_v = torch.stack([biases[g].float() for g in biases], dim=1)
        te = time.perf_counter()
        base = done

        def step(k: int, _: int) -> None:
            if progress is not None:
                progress(base + k, total)

        edges(lin, trace, rows, index, emb_cols, pos_cols, site_cols, settings, step,
               extra=(bias_c, bias_v), sink=sink, reuse=reuse)
        expanded[r] = True
        done += len(rows)
        timings["bias"] += te - tb
        timings["edges"] += time.perf_counter() - te

    def influence_on_targets() -> torch.Tensor:
        """circuit-tracer's partial influence ``Σ_{k≥1} w Â^k`` over the rows computed so far, in one pass:
        rows are visited by decreasing level (a row's sources all have a lower level), so when a row is
        reached its own influence is final."""
        score = torch.zeros(n_full, dtype=torch.float64)
        for L in sorted(stored, reverse=True):
            for rn, cnt, V in stored[L]:
                coef = (weight[rn] + score[rn]) / rowsum[rn].clamp_min(1e-30)
                contrib = V.abs().double() * coef.repeat_interleave(cnt)
                Cl = columns(rn)
                score.index_add_(0, Cl, contrib.masked_fill(is_bias[Cl], 0.0))
        return score

    compute(row_targets)
    while True:
        n_expanded = int((expanded & active).sum())
        candidates = (active & ~expanded).nonzero().flatten()  # ascending node index
        if n_expanded >= budget or candidates.numel() == 0:
            break
        tr = time.perf_counter()
        score = influence_on_targets()[candidates]
        top = float(score.max())
        # quantised to 2^-20 of the largest score, ties broken by node order: the choice does not flip
        # on the float round-off that differs between batch sizes
        q = torch.round(score / top * 2**20) if top > 0 else torch.zeros_like(score)
        order = torch.sort(-q, stable=True).indices
        take = candidates[order[:min(settings.expand_batch, budget - n_expanded)]].sort().values
        timings["ranking"] += time.perf_counter() - tr
        rows = _rows_of_features(lin, nodes, take.tolist())
        compute(rows)

    held_entries = sum(int(cnt.sum()) for chunks in stored.values() for _, cnt, _ in chunks)
    adj, new_nodes, old_to_new = _fold_unexpanded(nodes, site_cols, expanded, active, stored, columns)
    new_index = {nid: i for i, nid in enumerate(new_nodes.ids)}
    new_value = torch.full((len(new_nodes.ids),), float("nan"))
    rows_full = (~torch.isnan(value)).nonzero().flatten()
    new_value[old_to_new[rows_full]] = value[rows_full]
    prov = dict(provenance or {})
    prov["budget"] = {"max_feature_nodes": budget, "active_features": int(active.sum()),
                      "expanded_features": int((expanded & active).sum()),
                      "unexpanded_leaves": sum(k == "unexp" for k in new_nodes.kinds),
                      "held_entries": held_entries,
                      "memory_bytes": memory_terms(n_full, held_entries, [tuple(sc.vectors.shape) for sc in site_cols],
                                                   isinstance(site_cols[0].vectors, torch.Tensor) if site_cols else True,
                                                   trace.n_pos, lin.n_layers, lin.n_heads, lin.d_model,
                                                   len(site_cols), settings.batch_size, trace.nbytes())}
    return assemble(lin, trace, targets, new_nodes, new_index, adj, new_value, settings, prov, timings, t0)


# bytes per node of the node table and the per-node arrays: ids as Python strings, the table's seven lists and the
# id → column dict (measured 234 per feature node on CPython 3.11), the budget's level / rowsum / weight /
# expanded / value / position arrays (~49)
NODE_BYTES = 280
# bytes per (row of a backward batch × source) of the read-out's transients: the [nb, sources] values and their
# concatenated parts (4 + 4), the mask (1), the repeated columns (8), the selected indices (8 · causal share)
READOUT_BYTES_PER_ROW_SOURCE = 25


def memory_terms(n_nodes: int, held_entries: int, operand_shapes: list[tuple[int, int, int]], held_operands: bool,
                 n_pos: int, n_layers: int, n_heads: int, d_model: int, n_sites: int, batch_size: int,
                 trace_bytes: int) -> dict[str, int]:
    """The node budget's working memory in bytes, beyond the loaded model and dictionaries (README "Memory under a
    budget"), from the counts of one run: ``held_entries`` the entries of every computed row (a source upstream of
    it each), ``operand_shapes`` each site's read-out operand [P, 1 + K_s, d]: all held (``held_operands``), or
    built per batch (the largest one at a time, and 12 bytes per slot for the features' indices and activations);
    ``trace_bytes`` what the clean run's record holds (``Trace.nbytes``), alive for the whole attribution."""
    sizes = [p * k * d for p, k, d in operand_shapes]
    terms = {
        "rows_held": 4 * held_entries,
        "readout_operands": 4 * sum(sizes) if held_operands
                            else 4 * max(sizes, default=0) + 12 * sum(p * k for p, k, _ in operand_shapes),
        "node_table": NODE_BYTES * n_nodes,
        "adjoint": 4 * n_layers * (2 * n_heads * d_model**2 + 3 * n_heads * n_pos**2),
        "per_batch": 4 * (n_sites + 1) * n_pos * batch_size * d_model + READOUT_BYTES_PER_ROW_SOURCE * batch_size * n_nodes,
        "ranking": 16 * n_nodes,
        "trace": trace_bytes,
    }
    terms["total"] = sum(terms.values())
    return terms


def _rows_of_features(lin: Linearised, nodes: NodeTable, which: list[int]) -> list[Target]:
    """Row targets of the feature nodes ``which`` (indices into ``nodes``), grouped by site."""
    by_site: dict[tuple[int, str], list[int]] = {}
    for i in which:
        by_site.setdefault((nodes.layer[i], nodes.site[i]), []).append(i)
    rows: list[Target] = []
    for (layer, site), members in by_site.items():
        d = lin.site_dictionary(layer, site)
        feats = torch.tensor([nodes.feature[i] for i in members], dtype=torch.long)
        rows += feature_rows(d, layer, site, [nodes.ids[i] for i in members], [nodes.pos[i] for i in members], feats)
    return rows


def _fold_unexpanded(
    nodes: NodeTable, site_cols: list[SiteColumns], expanded: torch.Tensor, active: torch.Tensor,
    stored: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
    columns: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, NodeTable, torch.Tensor]:
    """The final node table (emb, pos, bias, then per site its errors, its ``unexp`` leaves and its expanded
    features, then the other targets) and CSR: each stored row's entries on unexpanded features summed
    (in float64) into the leaf of their (site, position); ``columns(rows)`` rebuilds a chunk's columns. Frees
    ``stored`` as it goes.
    Returns (adjacency, nodes, old index → new index)."""
    n_full = len(nodes.ids)
    old_to_new = torch.full((n_full,), -1, dtype=torch.long)
    new = NodeTable()

    def copy(idx: list[int]) -> None:
        first = len(new.ids)
        for name in ("ids", "kinds", "layer", "site", "pos", "feature", "activation"):
            col = getattr(nodes, name)
            getattr(new, name).extend(col[i] for i in idx)
        old_to_new[idx] = torch.arange(first, first + len(idx))

    in_sites = torch.zeros(n_full, dtype=torch.bool)
    for sc in site_cols:
        in_sites[sc.err_cols] = True
        in_sites[sc.feat_cols[sc.feat_cols >= 0]] = True
    first_site = min((int(sc.err_cols.min()) for sc in site_cols if sc.err_cols.numel()), default=n_full)
    copy(list(range(first_site)))  # emb, pos, bias
    for sc in site_cols:
        layer, site = sc.key
        copy(sc.err_cols.tolist())
        feats = sc.feat_cols[sc.feat_cols >= 0]  # by position, then feature: ascending node index
        left = feats[~expanded[feats]]
        if left.numel():
            lpos = torch.tensor([nodes.pos[i] for i in left.tolist()])
            for p in lpos.unique().tolist():
                leaf = new.add(ids.unexp_id(layer, site, p), "unexp", layer, site, p, -1, 1.0)
                old_to_new[left[lpos == p]] = leaf
        copy(feats[expanded[feats]].tolist())
    copy([i for i in range(first_site, n_full) if not in_sites[i]])  # targets that are not active features
    n = len(new.ids)
    counts = torch.zeros(n, dtype=torch.long)
    merged = []
    for L in sorted(stored):
        chunks = stored[L]
        while chunks:
            rn, cnt, V = chunks.pop()
            key = old_to_new[rn].repeat_interleave(cnt) * n + old_to_new[columns(rn)]
            key, perm = key.sort()
            uk, inv = torch.unique_consecutive(key, return_inverse=True)
            vals = torch.zeros(uk.numel(), dtype=torch.float64).index_add_(0, inv, V[perm].double())
            rows, rc = torch.unique_consecutive(uk // n, return_counts=True)
            counts[rows] = rc
            merged.append((rows, rc, (uk % n).int(), vals.float()))
    stored.clear()
    writer = CSRWriter(counts)
    for m in merged:
        writer.write_rows(*m)
    return writer.finish(), new, old_to_new

