"""Edge read-out: a batch of rows' edges from their leaf gradients (DESIGN.md §2).

``A[t, s] = a_s · (W_dec[s] · ∂t/∂(site output))`` for a feature s; g·(leaf value) for embeddings and error
nodes; the precomputed contribution for bias leaves. One batched product per leaf and position, entries
already in CSR column order.
"""

from __future__ import annotations

import torch

from workers.engine.linearise import site_order
from workers.engine.targets import tensor_site_bound
from workers.vocabulary import tensors as tn


class ReadOut:
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
        self.grads: dict[str, list[str]] = {}
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
            name = tn.site_delta(*sc.key)
            rank = site_rank(site_order(sc.key))
            K = sc.feat_cols.shape[1]
            self.vectors[name] = sc.vectors  # [pos, 1 + K, d]: slot 0 the error, then the features
            if sc.grads != [name]:  # a CLT source layer: read against its output layers' gradients side by side
                self.grads[name] = sc.grads
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
        self._block_table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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

    def columns_of(self, row_pos: torch.Tensor, row_rank: torch.Tensor) -> torch.Tensor:
        """The columns of rows at positions ``row_pos`` [nb] reading site rank ``row_rank`` [nb], one row after
        another, in the order :meth:`__call__` gives their entries: per block (sources sorted by position) the
        prefix at positions ≤ the row's, for blocks upstream of it. O(entries): the node budget keeps only a
        row's values and rebuilds its columns from this (4 bytes per entry instead of 8)."""
        if self._block_table is None:
            starts, n = [], 0
            for b in self.blocks:
                starts.append(n)
                n += len(b[2])
            self._block_table = (torch.cat([b[2] for b in self.blocks]), torch.tensor(starts),
                                 torch.tensor([b[4] for b in self.blocks]))
        cols, starts, ranks = self._block_table
        lengths = torch.stack([torch.searchsorted(b[3].contiguous(), row_pos, right=True) for b in self.blocks], 1)
        lengths = (lengths * (ranks[None] < row_rank[:, None])).flatten()  # [nb · blocks]
        first = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum())) - first.repeat_interleave(lengths)
        return cols[starts.repeat(len(row_pos)).repeat_interleave(lengths) + within]

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
        ranks = [site_rank(tensor_site_bound(rows[i].tensor)) for i in chunk]
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
                g = self._gradient(leaf, gmap)  # "emb": the embeddings' gradient, which the positional ones share
                if g is None:  # no path from this leaf to any row of the batch
                    parts.append(torch.zeros(c, nb))
                    continue
                if leaf in self.grads:  # a fresh concatenation: nothing to share
                    gt = g.transpose(1, 2)
                else:
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


    def _gradient(self, leaf: str, gmap: dict[str, torch.Tensor | None]) -> torch.Tensor | None:
        """The leaf's gradient [P, nb, d], or for a CLT source layer its output layers' side by side
        [P, nb, (L − ℓ)·d] (zeros where a layer has no path to the batch); None when none has one."""
        names = self.grads.get(leaf)
        if names is None:
            return gmap.get(leaf)
        gs = [gmap.get(n) for n in names]
        ref = next((g for g in gs if g is not None), None)
        if ref is None:
            return None
        return torch.cat([ref.new_zeros(ref.shape) if g is None else g for g in gs], -1)


def site_rank(order: tuple[int, int]) -> int:
    """(layer, 0=attn / 1=mlp) as one comparable integer (site_order and tensor_site_bound pairs)."""
    return min(order[0], 2**40) * 2 + order[1]

