"""Direct-effect adjacency from batched leaf gradients of the frozen model (DESIGN.md §2).

``A[t, s] = a_s · (W_dec[s] · ∂t/∂(site output))`` with every other node a constant. Each feature is also a
row (read at its pre-activation ``W_enc[f]·x + b_enc[f]``). Rows are processed in causal-cone groups: all
rows whose position is < P share P positions. Leaf gradients come from the explicit adjoint
(``adjoint.py``: matrix products through the frozen attention patterns) where the architecture and the
row's tensor allow it, else from autograd through one frozen forward per group (vmap-batched, or the
prompt replicated). Rows are put in a canonical order first, so results do not depend on the order targets
were given in; the cone grouping depends only on positions, not on the batch size.

Leaves: token / positional embeddings, error nodes (site, pos), features (their activation is the
leaf), and the bias leaf — everything the frozen model adds that is not a leaf, obtained exactly as
the frozen forward with every other leaf set to zero (optionally split into groups of parameters).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from workers.engine import ids
from workers.engine.adjoint import AdjointModel
from workers.engine.graph import ENGINE_VERSION, Graph, TargetInfo
from workers.engine.linearise import SITES, Linearised, Trace, site_order
from workers.engine.targets import Target, tensor_site_bound


@dataclass
class AttributionSettings:
    batch_size: int = 32  # targets per backward pass
    cone_chunk: int = 16  # positions per causal-cone group (1 = a forward per position)
    bias: Literal["total", "grouped"] = "total"  # one bias leaf, or one per parameter group
    dtype: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast in the backward passes
    feature_rows: bool = True  # compute edges into every active feature (False: targets only)
    # "adjoint": explicit transpose of the frozen model (workers/engine/adjoint.py) where the architecture
    # and the row's tensor allow it, else "vmap"; "vmap": one batch-1 frozen forward per cone group,
    # gradients batched through it (torch vmap); "replicate": the prompt replicated batch_size times, one
    # target per row (circuit-tracer's way)
    backward: Literal["adjoint", "vmap", "replicate"] = "adjoint"
    fold_bos: bool = True  # no feature nodes at position 0 when it holds the BOS token (circuit-tracer's rule)
    # node budget (README "Node budget"): at most this many active features become rows, chosen by their
    # estimated influence on the targets; the others stay sources, summed per (site, position) into one
    # "unexpanded features" leaf, so every row still sums to its value. None: every active feature is a row
    max_feature_nodes: int | None = None
    expand_batch: int = 256  # features expanded per re-ranking (the selection depends on it, not on batch_size)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class NodeTable:
    """Nodes in a fixed order: emb, pos, bias, errors, features, then target nodes (not features)."""

    ids: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    layer: list[int] = field(default_factory=list)
    site: list[str] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    feature: list[int] = field(default_factory=list)
    activation: list[float] = field(default_factory=list)

    def add(self, node_id: str, kind: str, layer: int, site: str, pos: int, feature: int, act: float) -> int:
        self.ids.append(node_id)
        self.kinds.append(kind)
        self.layer.append(layer)
        self.site.append(site)
        self.pos.append(pos)
        self.feature.append(feature)
        self.activation.append(act)
        return len(self.ids) - 1


@dataclass
class SiteColumns:
    """Sources at one site. feat_cols [pos, K] node index (−1 = padding), err_cols [pos], vectors
    [pos, 1 + K, d_out]: slot 0 the error vector, slot 1 + k the k-th feature's a_s W_dec[s] (zero on
    padding): the read-out's product operand, built once (no second copy)."""

    key: tuple[int, str]
    err_cols: torch.Tensor
    feat_cols: torch.Tensor
    vectors: torch.Tensor


def _feature_rows(d, layer: int, site: str, fids: list[str], pos: list[int], feats: torch.Tensor) -> list[Target]:
    """Rows of features: each read at its pre-activation ``W_enc[f]·in[pos] + b_enc[f]``."""
    enc = d.W_enc.detach()[feats]
    benc = d.b_enc.detach()[feats].tolist()
    tensor = f"in:L{layer}.{site}"
    return [Target(fid, tensor, p, enc[j], benc[j], label=fid) for j, (fid, p) in enumerate(zip(fids, pos, strict=True))]


def _bias_groups(lin: Linearised) -> dict[str, list[torch.Tensor]]:
    """Bias parameters grouped as ``L{layer}.{module}`` (model) / ``L{layer}.{site}.dict`` (dictionaries) /
    ``{module}`` outside the blocks. A parameter is a bias if its name ends in ``bias`` or is b_enc/b_dec."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in lin.model.named_parameters():
        if not name.endswith("bias"):
            continue
        m = re.search(r"\.(?:h|layers)\.(\d+)\.([^.]+)", name)
        g = f"L{m.group(1)}.{m.group(2)}" if m else name.rsplit(".", 2)[-2]
        groups.setdefault(g, []).append(p)
    for (layer, site), d in lin.dictionaries:
        groups.setdefault(f"L{layer}.{site}.dict", []).extend([d.b_enc, d.b_dec])
    return groups


def _read(run, t: Target) -> torch.Tensor:
    """Target value per batch row: [B]."""
    x = run.tensors[t.tensor][:, t.pos]
    return x @ t.vector.to(x.dtype) + t.offset


def read_rows(run, rows: list[Target]) -> torch.Tensor:
    """Values of many targets in one run, vectorised per tensor: [B, len(rows)]."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(rows):
        groups.setdefault(t.tensor, []).append(i)
    B = next(iter(run.tensors.values())).shape[0]
    out = torch.zeros(B, len(rows), dtype=torch.float32)
    for name, members in groups.items():
        X = run.tensors[name]
        pos = torch.tensor([rows[i].pos for i in members])
        vec = torch.stack([rows[i].vector for i in members]).to(X.dtype)
        off = torch.tensor([rows[i].offset for i in members], dtype=torch.float64)
        val = (X[:, pos] * vec[None]).sum(-1).double() + off
        out[:, members] = val.float()
    return out


@torch.no_grad()
def bias_contributions(lin: Linearised, trace: Trace, rows: list[Target], grouped: bool) -> dict[str, torch.Tensor]:
    """Per bias leaf, its contribution to each row [R]: the frozen forward with every embedding, error and
    feature leaf zero is exactly the bias term (the frozen model is affine in its leaves). Grouped: the
    same with all biases outside one group zeroed too (the model is linear in its biases as well)."""

    def once() -> torch.Tensor:
        run = lin.frozen_forward(trace, leaves="zero", require_grad=False)
        return read_rows(run, rows)[0] if rows else torch.zeros(0)

    if not grouped:
        return {"all": once()}
    groups = _bias_groups(lin)
    saved = {id(p): p.detach().clone() for ps in groups.values() for p in ps}
    offsets = {t.node_id: t.offset for t in rows}
    out: dict[str, torch.Tensor] = {}
    try:
        for p in (p for ps in groups.values() for p in ps):
            p.zero_()
        for t in rows:  # target offsets (b_enc of the target, lm_head bias) belong to their own group
            t.offset = 0.0
        for g, ps in groups.items():
            for p in ps:
                p.copy_(saved[id(p)])
            out[g] = once()
            for p in ps:
                p.zero_()
        out["readout"] = torch.tensor([offsets[t.node_id] for t in rows], dtype=torch.float32)
    finally:
        for ps in groups.values():
            for p in ps:
                p.copy_(saved[id(p)])
        for t in rows:
            t.offset = offsets[t.node_id]
    return out


def on_model_device(fn):
    """Run ``fn(lin, ...)`` with ``lin``'s device as torch's default device, so that every tensor the engine
    creates lives beside the model (ATLAS_DEVICE); the Graph it returns is moved to the CPU (``_graph``)."""

    @functools.wraps(fn)
    def run(lin: Linearised, *args, **kwargs):
        if lin.device.type == "cpu":  # torch's default already (the device context costs a hook per op)
            return fn(lin, *args, **kwargs)
        with torch.device(lin.device):
            return fn(lin, *args, **kwargs)

    return run


def _row_order(rows: list[Target]) -> list[int]:
    """Canonical order: by position, then by the site a row reads, then by id (order-independence)."""
    return sorted(range(len(rows)), key=lambda i: (rows[i].pos, tensor_site_bound(rows[i].tensor), rows[i].node_id))


@on_model_device
def build_graph(
    lin: Linearised,
    trace: Trace,
    targets: list[Target],
    settings: AttributionSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    provenance: dict | None = None,
) -> Graph:
    """Nodes, exact direct-effect adjacency and bias leaves for ``targets`` on a traced prompt."""
    settings = settings or AttributionSettings()
    t0 = time.perf_counter()
    if not targets:
        raise ValueError("no targets: give at least one (e.g. the top logits)")
    budget = settings.max_feature_nodes
    if budget is not None and (budget < 0 or not settings.feature_rows):
        raise ValueError("max_feature_nodes must be ≥ 0, and needs feature_rows=True")
    if settings.expand_batch < 1:
        raise ValueError("expand_batch must be ≥ 1")
    n_pos = trace.n_pos
    nodes = NodeTable()
    emb_cols = torch.tensor([nodes.add(ids.emb_id(p), "emb", -1, "", p, -1, 1.0) for p in range(n_pos)])
    pos_cols = None
    if trace.pos_emb is not None:
        pos_cols = torch.tensor([nodes.add(ids.pos_id(p), "pos", -1, "", p, -1, 1.0) for p in range(n_pos)])
    bias_names = ["all"] if settings.bias == "total" else [*_bias_groups(lin), "readout"]
    bias_cols = {}
    for g in bias_names:
        m = re.match(r"L(\d+)\.", g)
        bias_cols[g] = nodes.add(ids.bias_id(g), "bias", int(m.group(1)) if m else -1, "", -1, -1, 1.0)

    # errors and features, in forward order
    site_cols: list[SiteColumns] = []
    feature_rows: list[Target] = []
    for rec in trace.site_list():
        layer, site = rec.key
        err_cols = torch.tensor([nodes.add(ids.err_id(layer, site, p), "err", layer, site, p, -1, 1.0)
                                 for p in range(n_pos)])
        d = rec.dictionary
        counts = torch.bincount(rec.pos_idx, minlength=n_pos) if rec.n_active else torch.zeros(n_pos, dtype=torch.long)
        K = int(counts.max()) if rec.n_active else 0
        feat_cols = torch.full((n_pos, K), -1, dtype=torch.long)
        d_out = rec.out.shape[-1]
        vectors = torch.zeros(n_pos, 1 + K, d_out)
        vectors[:, 0] = rec.err.float()
        if d is not None and rec.n_active:
            order = torch.argsort(rec.pos_idx * (d.cfg.d_dict + 1) + rec.feat_idx)
            ps, fs, acts = rec.pos_idx[order], rec.feat_idx[order], rec.acts[order]
            start = torch.cumsum(counts, 0) - counts
            slot = torch.arange(len(ps)) - start[ps]  # rank of each feature among those at its position
            first = len(nodes.ids)
            pl, fl, al = ps.tolist(), fs.tolist(), acts.tolist()
            fids = [ids.feat_id(layer, site, p, f) for p, f in zip(pl, fl, strict=True)]
            nodes.ids += fids
            nodes.kinds += ["feat"] * len(fids)
            nodes.layer += [layer] * len(fids)
            nodes.site += [site] * len(fids)
            nodes.pos += pl
            nodes.feature += fl
            nodes.activation += al
            feat_cols[ps, slot] = torch.arange(first, first + len(fids))
            vectors[ps, 1 + slot] = (acts[:, None] * d.W_dec.detach()[fs]).float()
            if settings.feature_rows and budget is None:
                feature_rows += _feature_rows(d, layer, site, fids, pl, fs)
        site_cols.append(SiteColumns(rec.key, err_cols, feat_cols, vectors))

    # target nodes that are not features already in the table
    index = {n: i for i, n in enumerate(nodes.ids)}
    row_targets: list[Target] = list(feature_rows)
    row_ids = {t.node_id for t in feature_rows}
    for t in targets:
        if t.node_id in row_ids:
            continue  # a feature target that is an active feature: its row is computed anyway
        if budget is not None and t.node_id in index and nodes.kinds[index[t.node_id]] == "feat":
            row_targets.append(t)  # an active feature as a target: a row from the start (it counts as expanded)
            row_ids.add(t.node_id)
            continue
        if t.node_id in index:
            raise ValueError(f"target {t.node_id} duplicates a source node")
        kind = ids.parse(t.node_id).kind
        if kind == "feat":  # an inactive feature as a target (local circuit of a silent feature)
            pid = ids.parse(t.node_id)
            index[t.node_id] = nodes.add(t.node_id, "feat", pid.layer or 0, pid.site or "", t.pos, pid.feature or 0, 0.0)
        else:
            index[t.node_id] = nodes.add(t.node_id, kind, lin.n_layers, "", t.pos, -1, 1.0)
        row_targets.append(t)
        row_ids.add(t.node_id)
    n = len(nodes.ids)
    t_nodes = time.perf_counter()
    if budget is not None:
        return _budgeted_graph(lin, trace, targets, nodes, index, row_targets, emb_cols, pos_cols, bias_cols,
                               site_cols, settings, progress, provenance, t0, t_nodes)

    # the bias leaf, and the value of every row (clean run; equal to the frozen run by the splice identity)
    biases = bias_contributions(lin, trace, row_targets, grouped=settings.bias == "grouped")
    with torch.no_grad():
        run = lin.frozen_forward(trace, require_grad=False)
        values = read_rows(run, row_targets)[0]
    t_bias = time.perf_counter()

    r_all = torch.tensor([index[t.node_id] for t in row_targets], dtype=torch.long)
    bias_c = torch.tensor([bias_cols[g] for g in biases], dtype=torch.long)
    bias_v = torch.stack([biases[g].float() for g in biases], dim=1)  # [R, G]
    # every structurally possible edge is stored (exact zeros included), so each row's length is known
    # before any backward pass: the CSR arrays are allocated once and filled in place
    counts = torch.zeros(n, dtype=torch.long)
    site_cum = {sc.key: torch.cumsum((sc.feat_cols >= 0).sum(1) + 1, 0) for sc in site_cols}  # feats+err ≤ p
    n_leaf_pos = 1 + (1 if pos_cols is not None else 0)
    for t, r in zip(row_targets, r_all.tolist(), strict=True):
        bound = tensor_site_bound(t.tensor)
        c = n_leaf_pos * (t.pos + 1) + len(bias_c)
        for sc in site_cols:
            if site_order(sc.key) < bound:
                c += int(site_cum[sc.key][t.pos])
        counts[r] = c
    writer = CSRWriter(counts)
    _edges(lin, trace, row_targets, index, emb_cols, pos_cols, site_cols, settings, progress,
           extra=(bias_c, bias_v), sink=writer.write_rows)
    t_edges = time.perf_counter()
    adj = writer.finish()
    value = torch.full((n,), float("nan"))
    value[r_all] = values
    timings = {"nodes": t_nodes - t0, "bias": t_bias - t_nodes, "edges": t_edges - t_bias}
    return _graph(lin, trace, targets, nodes, index, adj, value, settings, provenance, timings, t0)


def _budgeted_graph(
    lin: Linearised, trace: Trace, targets: list[Target], nodes: NodeTable, index: dict[str, int],
    row_targets: list[Target], emb_cols: torch.Tensor, pos_cols: torch.Tensor | None, bias_cols: dict[str, int],
    site_cols: list[SiteColumns], settings: AttributionSettings, progress: Callable[[int, int], None] | None,
    provenance: dict | None, t0: float, t_nodes: float,
) -> Graph:
    """The graph under a node budget (README "Node budget"). ``nodes`` holds every active feature; rows are
    computed for the targets, then for batches of the features ranked by their influence on the targets
    through the rows computed so far, until ``max_feature_nodes`` features are rows. Rows are kept with an
    entry for every structurally possible source; at the end the features that never became rows are
    summed, per (site, position), into one ``unexp`` leaf (activation 1: its edge carries the value)."""
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
    stored: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    reuse: dict = {}
    with torch.no_grad():
        clean = lin.frozen_forward(trace, require_grad=False)
    timings = {"nodes": t_nodes - t0, "bias": 0.0, "edges": 0.0, "ranking": 0.0}
    done = 0
    total = len(row_targets) + min(budget, int(active.sum()))

    def sink(rnodes: torch.Tensor, cnt: torch.Tensor, C: torch.Tensor, V: torch.Tensor) -> None:
        entry_row = rnodes.repeat_interleave(cnt)
        a = V.abs().double().masked_fill(is_bias[C.long()], 0.0)
        rowsum.index_add_(0, entry_row, a)
        lv = level[rnodes]
        for L in lv.unique().tolist():  # kept per level: the ranking walks the levels top-down
            sel = lv == L
            keep = sel.repeat_interleave(cnt)
            stored.setdefault(L, []).append((rnodes[sel], cnt[sel], C[keep], V[keep]))

    def compute(rows: list[Target]) -> None:
        nonlocal done
        tb = time.perf_counter()
        r = torch.tensor([index[t.node_id] for t in rows], dtype=torch.long)
        biases = bias_contributions(lin, trace, rows, grouped=grouped)
        with torch.no_grad():
            value[r] = read_rows(clean, rows)[0]
        level[r] = torch.tensor([_site_rank(tensor_site_bound(t.tensor)) for t in rows])
        bias_c = torch.tensor([bias_cols[g] for g in biases], dtype=torch.long)
        bias_v = torch.stack([biases[g].float() for g in biases], dim=1)
        te = time.perf_counter()
        base = done

        def step(k: int, _: int) -> None:
            if progress is not None:
                progress(base + k, total)

        _edges(lin, trace, rows, index, emb_cols, pos_cols, site_cols, settings, step,
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
            for rn, cnt, C, V in stored[L]:
                coef = (weight[rn] + score[rn]) / rowsum[rn].clamp_min(1e-30)
                contrib = V.abs().double() * coef.repeat_interleave(cnt)
                Cl = C.long()
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

    adj, new_nodes, old_to_new = _fold_unexpanded(nodes, site_cols, expanded, active, stored)
    new_index = {nid: i for i, nid in enumerate(new_nodes.ids)}
    new_value = torch.full((len(new_nodes.ids),), float("nan"))
    rows_full = (~torch.isnan(value)).nonzero().flatten()
    new_value[old_to_new[rows_full]] = value[rows_full]
    prov = dict(provenance or {})
    prov["budget"] = {"max_feature_nodes": budget, "active_features": int(active.sum()),
                      "expanded_features": int((expanded & active).sum()),
                      "unexpanded_leaves": sum(k == "unexp" for k in new_nodes.kinds)}
    return _graph(lin, trace, targets, new_nodes, new_index, adj, new_value, settings, prov, timings, t0)


def _rows_of_features(lin: Linearised, nodes: NodeTable, which: list[int]) -> list[Target]:
    """Row targets of the feature nodes ``which`` (indices into ``nodes``), grouped by site."""
    by_site: dict[tuple[int, str], list[int]] = {}
    for i in which:
        by_site.setdefault((nodes.layer[i], nodes.site[i]), []).append(i)
    rows: list[Target] = []
    for (layer, site), members in by_site.items():
        d = lin.dictionaries.get(layer, site)
        feats = torch.tensor([nodes.feature[i] for i in members], dtype=torch.long)
        rows += _feature_rows(d, layer, site, [nodes.ids[i] for i in members], [nodes.pos[i] for i in members], feats)
    return rows


def _fold_unexpanded(
    nodes: NodeTable, site_cols: list[SiteColumns], expanded: torch.Tensor, active: torch.Tensor,
    stored: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]],
) -> tuple[torch.Tensor, NodeTable, torch.Tensor]:
    """The final node table (emb, pos, bias, then per site its errors, its ``unexp`` leaves and its expanded
    features, then the other targets) and CSR: each stored row's entries on unexpanded features summed
    (in float64) into the leaf of their (site, position). Frees ``stored`` as it goes.
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
            rn, cnt, C, V = chunks.pop()
            key = old_to_new[rn].repeat_interleave(cnt) * n + old_to_new[C.long()]
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


def _graph(lin: Linearised, trace: Trace, targets: list[Target], nodes: NodeTable, index: dict[str, int],
           adj: torch.Tensor, value: torch.Tensor, settings: AttributionSettings, provenance: dict | None,
           timings: dict[str, float], t0: float) -> Graph:
    infos = []
    for t in targets:
        infos.append(TargetInfo(t.node_id, t.label, t.tensor, t.pos, t.weight, float(value[index[t.node_id]]),
                                t.token_prob))
    prov = dict(provenance or {})
    prov.update({
        "engine_version": ENGINE_VERSION,
        "settings": settings.to_dict(),
        "n_layers": lin.n_layers,
        "timings_s": {**timings, "total": time.perf_counter() - t0},
    })
    cpu = torch.device("cpu")  # results leave the device (ATLAS_DEVICE) here
    return Graph(
        node_ids=nodes.ids, kinds=nodes.kinds, layer=torch.tensor(nodes.layer, device=cpu), site=nodes.site,
        pos=torch.tensor(nodes.pos, device=cpu), feature=torch.tensor(nodes.feature, device=cpu),
        activation=torch.tensor(nodes.activation, dtype=torch.float32, device=cpu), value=value.cpu(),
        adjacency=adj.cpu(),
        targets=infos, tokens=trace.input_ids.tolist(), provenance=prov,
    )


def _edges(
    lin: Linearised,
    trace: Trace,
    rows: list[Target],
    index: dict[str, int],
    emb_cols: torch.Tensor,
    pos_cols: torch.Tensor | None,
    site_cols: list[SiteColumns],
    settings: AttributionSettings,
    progress: Callable[[int, int], None] | None,
    value_only: bool = True,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    sink: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    reuse: dict | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every edge into ``rows``, as chunks (row node int32, column node int32, weight fp32) grouped by row
    with columns ascending, one chunk per backward batch; each row lies in exactly one chunk. ``extra`` = (columns
    [G], weights [len(rows), G]) adds per-row entries (the bias leaves).

    Rows whose tensor the explicit adjoint supports (``backward="adjoint"``, the default, on a supported
    architecture) get their leaf gradients from it; the others from autograd through the frozen forward.
    ``reuse``: a dict kept by a caller that calls this repeatedly on one trace (the node budget's batches),
    holding the read-out tables and the adjoint between calls."""
    order = _row_order(rows)
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    reuse = {} if reuse is None else reuse
    if "readout" not in reuse:
        # bf16 (autocast) is an autograd feature: those runs keep the autograd path
        use_adjoint = settings.backward == "adjoint" and settings.dtype == "fp32"
        reuse["readout"] = _ReadOut(rows, index, emb_cols, pos_cols, site_cols, trace, extra, len(index))
        reuse["adjoint"] = AdjointModel.build(lin, trace) if use_adjoint else None
    readout, adjoint = reuse["readout"], reuse["adjoint"]
    readout.rows, readout.extra = rows, extra
    fast = [i for i in order if adjoint is not None and adjoint.supports(rows[i].tensor)]
    slow = [i for i in order if adjoint is None or not adjoint.supports(rows[i].tensor)]
    done = 0

    def emit(chunk: list[int], gmap: dict[str, torch.Tensor | None], P: int) -> None:
        nonlocal done
        rnodes, cnt, C, V = readout(chunk, gmap, P)
        if sink is not None:
            sink(rnodes, cnt, C, V)
        else:
            chunks.append((rnodes.repeat_interleave(cnt).int(), C, V))
        done += len(chunk)
        if progress is not None:
            progress(done, len(rows))

    if fast:
        assert adjoint is not None
        for members in _cone_groups(rows, fast, settings.cone_chunk):
            P = max(rows[i].pos for i in members) + 1
            # one batch reads one tensor (the adjoint starts from it); canonical order inside
            for start in range(0, len(members), settings.batch_size):
                block = members[start:start + settings.batch_size]
                for tensor in dict.fromkeys(rows[i].tensor for i in block):
                    chunk = [i for i in block if rows[i].tensor == tensor]
                    pos = torch.tensor([rows[i].pos for i in chunk])
                    vec = torch.stack([rows[i].vector for i in chunk])
                    emit(chunk, dict(adjoint.leaf_gradients(tensor, pos, vec, P)), P)
            _release_freed_memory()
    autocast = (torch.autocast(lin.device.type, dtype=torch.bfloat16) if settings.dtype == "bf16" else None)
    vmap = settings.backward != "replicate"
    for members in _cone_groups(rows, slow, settings.cone_chunk):
        P = max(rows[i].pos for i in members) + 1
        B = min(settings.batch_size, len(members))
        fwd_batch = 1 if vmap else B
        with autocast if autocast is not None else contextlib.nullcontext():
            run = lin.frozen_forward(trace, P, batch=fwd_batch, value_only=value_only)
        leaf_names = [k for k in run.leaves_out]
        leaves = [run.leaves_out[k] for k in leaf_names]
        for start in range(0, len(members), B):
            chunk = members[start:start + B]
            nb = len(chunk)
            grads_out: dict[str, torch.Tensor] = {}
            for b, i in enumerate(chunk):
                t = rows[i]
                g = grads_out.get(t.tensor)
                if g is None:
                    ref = run.tensors[t.tensor]
                    # vmap: one batched gradient [nb, 1, P, D] through the batch-1 graph; replicate: row b
                    # of a B-fold replicated forward carries row b's gradient
                    shape = (nb, *ref.shape) if vmap else ref.shape
                    g = grads_out[t.tensor] = torch.zeros(shape, dtype=ref.dtype)
                if vmap:
                    g[b, 0, t.pos] = t.vector.to(g.dtype)
                else:
                    g[b, t.pos] = t.vector.to(g.dtype)
            names = list(grads_out)
            outs = [run.tensors[k] for k in names]
            with autocast if autocast is not None else contextlib.nullcontext():
                grads = torch.autograd.grad(outs, leaves, [grads_out[k] for k in names], retain_graph=True,
                                            allow_unused=True, is_grads_batched=vmap)
            if vmap:
                grads = tuple(None if g is None else g[:, 0] for g in grads)
            emit(chunk, {k: (g[:nb].float().transpose(0, 1) if g is not None else None)  # [P, nb, D]
                         for k, g in zip(leaf_names, grads, strict=True)}, P)
        del run
        _release_freed_memory()
    return chunks


def _cone_groups(rows: list[Target], members: list[int], cone_chunk: int) -> list[list[int]]:
    """Rows with position in [c·chunk, (c+1)·chunk) share a cone of P = max pos + 1 positions; inside a
    group, rows that read the same depth are consecutive (a batch of layer-0 rows only goes through
    layer 0), in a canonical order (order-independence)."""
    groups: dict[int, list[int]] = {}
    for i in members:
        groups.setdefault(rows[i].pos // max(cone_chunk, 1), []).append(i)
    return [sorted(g, key=lambda i: (tensor_site_bound(rows[i].tensor), rows[i].tensor, rows[i].pos,
                                     _feature_number(rows[i].node_id), rows[i].node_id))
            for _, g in sorted(groups.items())]


def _feature_number(node_id: str) -> int:
    """f of a feature id (−1 otherwise): feature rows at one position then come in node order."""
    return int(node_id.rsplit(":f", 1)[1]) if node_id.startswith("feat:") else -1


class _ReadOut:
    """Edges of a batch of rows from their leaf gradients: emb/pos/error edges are g·(leaf value), feature
    edges g·a_s W_dec[s], bias edges the precomputed contributions, each restricted to the sources upstream
    of the row (position ≤ the row's, site before the tensor it reads).

    Node columns come in blocks (emb, pos, bias, then per site its errors and its features), each sorted by
    position, so a row's sources are a prefix of every block and its entries, block after block, are
    already in column order: one [nb, sources] value matrix and one mask give the CSR entries, no sort.
    Per leaf, every source vector at a position (its error / embedding value and its features' a_s W_dec[s])
    sits in one [pos, d, slots] tensor, so a leaf's edges are one batched product over positions."""

    def __init__(self, rows, index, emb_cols, pos_cols, site_cols, trace, extra, n_cols) -> None:
        self.rows, self.index, self.extra, self.n_cols = rows, index, extra, n_cols
        n_pos = trace.n_pos
        # per leaf: source vectors [pos, slots, d]; blocks: (leaf, flat index into [pos·slots] per source,
        # columns [n], source positions [n], site rank) in column order
        self.vectors: dict[str, torch.Tensor] = {}
        blocks: list[tuple[str, torch.Tensor | None, torch.Tensor, torch.Tensor, int]] = []
        ar = torch.arange(n_pos)
        leaves = [(w, c, v) for w, c, v in (("emb", emb_cols, trace.emb), ("pos", pos_cols, trace.pos_emb))
                  if c is not None and v is not None]
        if leaves:  # emb and pos read the same gradient: one tensor with a slot each
            self.vectors["emb"] = torch.stack([v.float() for _, _, v in leaves], 1).contiguous()
        for slot, (_, cols, _) in enumerate(leaves):
            blocks.append(("emb", ar * len(leaves) + slot, cols, ar, -1))
        if extra is not None:
            blocks.append(("bias", None, extra[0], torch.full((len(extra[0]),), -1), -1))
        for sc in site_cols:
            name = f"delta:L{sc.key[0]}.{sc.key[1]}"
            rank = _site_rank(site_order(sc.key))
            K = sc.feat_cols.shape[1]
            self.vectors[name] = sc.vectors  # [pos, 1 + K, d]: slot 0 the error, then the features
            blocks.append((name, ar * (K + 1), sc.err_cols, ar, rank))
            if K:
                ok = sc.feat_cols >= 0  # [pos, K]; features are numbered by (position, slot)
                flat = ok.flatten().nonzero().flatten()
                q, slot = flat // K, flat % K
                blocks.append((name, q * (K + 1) + 1 + slot, sc.feat_cols.flatten()[flat], q, rank))
        if any(bool((b[2][1:] < b[2][:-1]).any()) for b in blocks):
            raise RuntimeError("node columns are not sorted within a block (engine bug)")
        self.blocks = blocks
        self._layout: dict[tuple[int, int], tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def layout(self, P: int, rank_limit: int):
        """Blocks of sources upstream of some row (site rank < ``rank_limit``): per block the number of its
        sources at positions < P (0 if not upstream); columns, positions and site ranks of those."""
        lay = self._layout.get((P, rank_limit))
        if lay is None:
            if any(key[0] != P for key in self._layout):
                self._layout.clear()  # batches come in order of P: keep the current length's layouts only
            counts = [int((b[3] < P).sum()) if b[4] < rank_limit else 0 for b in self.blocks]
            cols = torch.cat([b[2][:c] for b, c in zip(self.blocks, counts, strict=True)])
            spos = torch.cat([b[3][:c] for b, c in zip(self.blocks, counts, strict=True)])
            rank = torch.cat([torch.full((c,), b[4]) for b, c in zip(self.blocks, counts, strict=True)])
            lay = self._layout[(P, rank_limit)] = (counts, cols, spos, rank)
        return lay

    def __call__(self, chunk: list[int], gmap: dict[str, torch.Tensor | None], P: int):
        """``gmap``: leaf gradients [P, nb, d] (rows in chunk order). Returns (row nodes [nb] ascending,
        entries per row [nb], columns, values), rows one after another."""
        rows = self.rows
        row_nodes = torch.tensor([self.index[rows[i].node_id] for i in chunk])
        # output rows ascending, so that consecutive ones fill one CSR slice (feature rows come in node
        # order already); values are computed in the batch's canonical order and only then permuted, so
        # every product sees its rows where it always does (bit-identical results for any target order)
        identity = bool((row_nodes[1:] > row_nodes[:-1]).all())
        perm = torch.argsort(row_nodes)
        nb = len(chunk)
        row_pos = torch.tensor([rows[i].pos for i in chunk])
        ranks = [_site_rank(tensor_site_bound(rows[i].tensor)) for i in chunk]
        row_rank = torch.tensor(ranks)
        counts, cols, spos, rank = self.layout(P, max(ranks))
        products: dict[str, torch.Tensor] = {}
        by_grad: dict[int, torch.Tensor] = {}
        parts: list[torch.Tensor] = []  # [sources, nb] each
        for (leaf, flat, _, _, _), c in zip(self.blocks, counts, strict=True):
            if c == 0:
                continue
            if leaf == "bias":
                assert self.extra is not None
                parts.append(self.extra[1][chunk].float().T)
                continue
            wf = products.get(leaf)
            if wf is None:
                g = gmap.get(leaf)  # "emb": the embeddings' gradient, which the positional ones share
                if g is None:  # no path from this leaf to any row of the batch
                    parts.append(torch.zeros(c, nb))
                    continue
                gt = by_grad.get(id(g))
                if gt is None:  # [P, nb, d] -> [P, d, nb]
                    gt = by_grad[id(g)] = g.transpose(1, 2)
                vec = self.vectors[leaf][:P]
                # per position, [slots, d] @ [d, nb]: every source at that position against every row
                wf = products[leaf] = torch.bmm(vec, gt).reshape(-1, nb)  # [P·slots, nb]
            assert flat is not None
            parts.append(wf.index_select(0, flat[:c]))
        values = torch.cat(parts, 0).T  # [nb, sources at positions < P], column order
        if not identity:
            values, row_nodes, row_pos, row_rank = values[perm], row_nodes[perm], row_pos[perm], row_rank[perm]
        if min(ranks) == max(ranks):  # every row reads the same tensor: sources differ by position only
            mask = spos[None] <= row_pos[:, None]
        else:
            mask = (spos[None] <= row_pos[:, None]) & (rank[None] < row_rank[:, None])
        idx = mask.flatten().nonzero().flatten()
        return (row_nodes, mask.sum(1), cols.repeat(nb).index_select(0, idx).int(),
                values.reshape(-1).index_select(0, idx).float())


def _site_rank(order: tuple[int, int]) -> int:
    """(layer, 0=attn / 1=mlp) as one comparable integer (site_order and tensor_site_bound pairs)."""
    return min(order[0], 2**40) * 2 + order[1]


def _release_freed_memory() -> None:
    """Give freed heap back to the OS between cone groups (glibc keeps it otherwise, and each group's
    transient tensors have new sizes, so peak RSS would creep up by fragmentation)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CSRWriter:
    """Fills a CSR [n, n] with int32 indices whose row lengths are known in advance, from chunks each
    sorted by (row, column) and owning their rows exclusively (memory: 8 bytes per edge, no copies)."""

    def __init__(self, counts: torch.Tensor) -> None:
        n = counts.numel()
        self.crow = torch.zeros(n + 1, dtype=torch.long)
        self.crow[1:] = counts.cumsum(0)
        nnz = int(self.crow[-1])
        if nnz >= 2**31:
            raise RuntimeError(f"{nnz} edges exceed int32 CSR indexing: attribute fewer rows (targets only)")
        self.counts = counts
        self.filled = torch.zeros(n, dtype=torch.long)
        self.cols = torch.empty(nnz, dtype=torch.int32)
        self.vals = torch.empty(nnz, dtype=torch.float32)

    def write_rows(self, rows: torch.Tensor, cnt: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> None:
        """Whole rows ``rows [m]`` (ascending), ``cnt [m]`` entries each, their columns and values one row
        after another."""
        if rows.numel() == 0:
            return
        if not torch.equal(cnt, self.counts[rows]) or bool(self.filled[rows].any()):
            raise RuntimeError("edge chunk does not match the expected row lengths (engine bug)")
        first, m = int(rows[0]), rows.numel()
        if int(rows[-1]) - first == m - 1 and bool((rows[1:] > rows[:-1]).all()):
            a = int(self.crow[first])  # consecutive rows: one contiguous slice of the CSR arrays
            self.cols[a:a + c.numel()] = c
            self.vals[a:a + c.numel()] = v
        else:
            starts = torch.cumsum(cnt, 0) - cnt
            dest = (self.crow[rows] - starts).repeat_interleave(cnt) + torch.arange(c.numel())
            self.cols[dest] = c
            self.vals[dest] = v
        self.filled[rows] = cnt

    def finish(self) -> torch.Tensor:
        if not torch.equal(self.filled, self.counts):
            missing = int((self.filled != self.counts).sum())
            raise RuntimeError(f"{missing} rows were not filled (engine bug)")
        n = self.counts.numel()
        return torch.sparse_csr_tensor(self.crow.int(), self.cols, self.vals, size=(n, n))


__all__ = ["AttributionSettings", "build_graph", "bias_contributions", "SITES"]


@on_model_device
def attribute(
    lin: Linearised,
    prompt: str | torch.Tensor | list[int],
    targets: list[str | Target] | None = None,
    *,
    tokenizer=None,
    settings: AttributionSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Graph:
    """Attribution graph of ``prompt`` (text, with ``tokenizer``; or token ids) for ``targets``: Target
    objects or strings (``top``, ``logit:TOKEN[@POS]``, ``diff:GOOD,BAD[@POS]``, ``feat:L2.mlp:p5:f123``);
    default: the top logits at the last position."""
    from workers.engine.targets import parse_target

    settings = settings or AttributionSettings()
    t0 = time.perf_counter()
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; or pass token ids")
        input_ids = torch.tensor(tokenizer(prompt)["input_ids"], dtype=torch.long)
        text = prompt
    else:
        input_ids = torch.as_tensor(prompt, dtype=torch.long).flatten()
        text = ""
    if input_ids.numel() == 0:
        raise ValueError("the prompt is empty")
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if bos is None:
        bos = getattr(lin.model.config, "bos_token_id", None)
    fold = settings.fold_bos and bos is not None and int(input_ids[0]) == int(bos)
    trace = lin.trace(input_ids, fold_first=fold)
    t_trace = time.perf_counter() - t0
    resolved: list[Target] = []
    for t in targets or ["top"]:
        resolved += parse_target(t, lin, trace, tokenizer) if isinstance(t, str) else [t]
    prov = {
        "model_name": str(getattr(lin.model.config, "_name_or_path", "") or type(lin.model).__name__),
        "model_hash": lin.content_hash(),
        "dictionary_hash": lin.dictionary_hash(),
        "bos_folded": bool(fold),
        "device": str(lin.device),
        "weights_dtype": str(lin.dtype).removeprefix("torch."),
    }
    g = build_graph(lin, trace, resolved, settings, progress, prov)
    g.prompt = text
    if tokenizer is not None:
        g.token_strings = [tokenizer.decode([int(i)]) for i in input_ids.tolist()]
    g.provenance["timings_s"]["trace"] = t_trace
    g.provenance["timings_s"]["total"] = time.perf_counter() - t0
    return g
