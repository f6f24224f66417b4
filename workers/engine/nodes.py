"""The node table of an attribution graph and the source columns of each site (DESIGN.md §2).

Nodes come in a fixed order: token embeddings, positional embeddings, bias leaves, then per site (forward
order) its error nodes and its active features (by position, then feature index), then target nodes that
are not features. ``lay_out`` builds that table from a trace, with the row targets (every active feature,
read at its pre-activation, plus the given targets); ``assemble`` turns it and an adjacency into a ``Graph``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from workers.engine.bias import bias_groups
from workers.engine.graph import ENGINE_VERSION, Graph, TargetInfo
from workers.engine.linearise import Linearised, Trace
from workers.engine.targets import Target
from workers.vocabulary import ids
from workers.vocabulary import tensors as tn

if TYPE_CHECKING:
    from workers.engine.attribution import AttributionSettings


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


class DecoderOperand:
    """The read-out's product operand of one site, ``[pos, 1 + K, d_out]``: slot 0 the error vector, slot 1 + k
    the k-th feature's a_s W_dec[s] (zero on padding), built on demand for a prefix of positions (``[:P]``) from
    the features' indices and activations and the dictionary's decoder. Under a node budget this keeps the
    operands out of memory between batches (O(active features · d) otherwise, the largest term at length:
    README "Memory under a budget"); the values are bit-identical to :meth:`dense`'s."""

    def __init__(self, err: torch.Tensor, feats: torch.Tensor, acts: torch.Tensor, W_dec: torch.Tensor | None) -> None:
        self.err, self.feats, self.acts, self.W_dec = err, feats, acts, W_dec  # [pos, d], [pos, K] (0 on padding) ×2
        # width: d_out, or a CLT source layer's writes side by side (SiteColumns.grads)
        width = err.shape[1] if W_dec is None else W_dec.shape[1]
        self.shape = (err.shape[0], 1 + feats.shape[1], width)

    def __getitem__(self, positions: slice) -> torch.Tensor:
        err, feats, acts = self.err[positions], self.feats[positions], self.acts[positions]
        out = torch.empty(err.shape[0], self.shape[1], self.shape[2])
        out[:, 0, : err.shape[1]] = err.float()
        out[:, 0, err.shape[1]:] = 0.0
        if self.W_dec is not None and feats.shape[1]:
            gathered = self.W_dec.detach().index_select(0, feats.flatten()).view(*feats.shape, -1)
            out[:, 1:] = (acts[..., None] * gathered).float()
        else:
            out[:, 1:] = 0.0
        return out

    def dense(self) -> torch.Tensor:
        return self[:]

    def numel(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


@dataclass
class SiteColumns:
    """Sources at one site. feat_cols [pos, K] node index (−1 = padding), err_cols [pos], vectors
    [pos, 1 + K, width]: slot 0 the error vector, slot 1 + k the k-th feature's a_s W_dec[s] (zero on
    padding): the read-out's product operand, built once (no second copy), or under a node budget a
    ``DecoderOperand`` that builds it per batch. ``grads``: the δ leaves whose gradients, side by side, the
    vectors are read against: this site's, or for a CLT's source layer ℓ those of the MLP outputs of layers
    ℓ..L−1 (its features write to all of them; width = (L − ℓ)·d_out, the error vector fills the first d_out
    entries, the rest zero), so a CLT feature's edge is the sum over the layers it writes to."""

    key: tuple[int, str]
    err_cols: torch.Tensor
    feat_cols: torch.Tensor
    vectors: torch.Tensor | DecoderOperand
    grads: list[str]


def read_against(rec) -> list[str]:
    """The δ leaves a site's source vectors are read against (``SiteColumns.grads``): its own, or for a CLT's
    source layer ℓ those of layers ℓ..L−1, whose MLP outputs its features write to."""
    writes = getattr(rec.dictionary, "writes", None)
    layer, site = rec.key
    return [tn.site_delta(m, site) for m in writes] if writes else [tn.site_delta(layer, site)]


def feature_rows(d, layer: int, site: str, fids: list[str], pos: list[int], feats: torch.Tensor) -> list[Target]:
    """Rows of features: each read at its pre-activation ``W_enc[f]·in[pos] + b_enc[f]``."""
    enc = d.W_enc.detach()[feats]
    benc = d.b_enc.detach()[feats].tolist()
    tensor = tn.site_input(layer, site)
    return [Target(fid, tensor, p, enc[j], benc[j], label=fid) for j, (fid, p) in enumerate(zip(fids, pos, strict=True))]


@dataclass
class Layout:
    """The node table of one attribution and where its sources sit: embedding / positional columns, bias
    leaf columns by group name, per site its error and feature columns (``SiteColumns``), ``index`` (node id
    → column) and the rows to compute (``row_targets``: feature rows first, then the other targets)."""

    nodes: NodeTable
    index: dict[str, int]
    row_targets: list[Target]
    emb_cols: torch.Tensor
    pos_cols: torch.Tensor | None
    bias_cols: dict[str, int]
    site_cols: list[SiteColumns]


def lay_out(lin: Linearised, trace: Trace, targets: list[Target], settings: AttributionSettings) -> Layout:
    """The node table for ``targets`` on a traced prompt. Under a node budget no feature is a row yet
    (``budget.budgeted_graph`` chooses them); an active feature given as a target is a row from the start."""
    budget = settings.max_feature_nodes
    n_pos = trace.n_pos
    nodes = NodeTable()
    emb_cols = torch.tensor([nodes.add(ids.emb_id(p), "emb", -1, "", p, -1, 1.0) for p in range(n_pos)])
    pos_cols = None
    if trace.pos_emb is not None:
        pos_cols = torch.tensor([nodes.add(ids.pos_id(p), "pos", -1, "", p, -1, 1.0) for p in range(n_pos)])
    bias_names = ["all"] if settings.bias == "total" else [*bias_groups(lin), "readout"]
    bias_cols = {}
    for g in bias_names:
        m = re.match(r"L(\d+)\.", g)
        bias_cols[g] = nodes.add(ids.bias_id(g), "bias", int(m.group(1)) if m else -1, "", -1, -1, 1.0)

    # errors and features, in forward order
    site_cols: list[SiteColumns] = []
    frows: list[Target] = []
    for rec in trace.site_list():
        layer, site = rec.key
        err_cols = torch.tensor([nodes.add(ids.err_id(layer, site, p), "err", layer, site, p, -1, 1.0)
                                 for p in range(n_pos)])
        d = rec.dictionary
        counts = torch.bincount(rec.pos_idx, minlength=n_pos) if rec.n_active else torch.zeros(n_pos, dtype=torch.long)
        K = int(counts.max()) if rec.n_active else 0
        feat_cols = torch.full((n_pos, K), -1, dtype=torch.long)
        slot_feats = torch.zeros(n_pos, K, dtype=torch.long)  # the decoder row of each slot (0 on padding)
        slot_acts = torch.zeros(n_pos, K, dtype=rec.acts.dtype)
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
            slot_feats[ps, slot], slot_acts[ps, slot] = fs, acts
            if settings.feature_rows and budget is None:
                frows += feature_rows(d, layer, site, fids, pl, fs)
        site_cols.append(SiteColumns(rec.key, err_cols, feat_cols,
                                     DecoderOperand(rec.err, slot_feats, slot_acts, None if d is None else d.W_dec),
                                     read_against(rec)))
    # under a budget, operands beyond settings.operand_memory_gb are built per batch: they are O(active features · d)
    # (the rows held are O(budget)); otherwise built once here
    if budget is None or 4 * sum(sc.vectors.numel() for sc in site_cols) <= settings.operand_memory_gb * 1e9:
        for sc in site_cols:
            sc.vectors = sc.vectors.dense()

    # target nodes that are not features already in the table
    index = {n: i for i, n in enumerate(nodes.ids)}
    row_targets: list[Target] = list(frows)
    row_ids = {t.node_id for t in frows}
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
    return Layout(nodes, index, row_targets, emb_cols, pos_cols, bias_cols, site_cols)


def assemble(lin: Linearised, trace: Trace, targets: list[Target], nodes: NodeTable, index: dict[str, int],
             adj: torch.Tensor, value: torch.Tensor, settings: AttributionSettings, provenance: dict | None,
             timings: dict[str, float], t0: float) -> Graph:
    """The ``Graph``: nodes, adjacency, row values, target infos and provenance (settings, timings)."""
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

