"""The CSR writer: the adjacency ``A[target, source]`` filled in place, 8 bytes per edge (int32 column, fp32
value), row lengths known before any backward pass (every structurally possible edge is stored)."""

from __future__ import annotations

import torch


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

