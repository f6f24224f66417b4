"""The backward strategies: every edge into a list of rows, from batched leaf gradients (DESIGN.md §2).

Rows are put in a canonical order first (results do not depend on the order targets were given in) and
processed in causal-cone groups: all rows whose position is < P share P positions (the grouping depends only
on positions, not on the batch size). Leaf gradients come from the explicit adjoint (``adjoint.py``: matrix
products through the frozen attention patterns) where the architecture and the row's tensor allow it, else
from autograd through one frozen forward per group: vmap-batched through a batch-1 forward, or the prompt
replicated (``AttributionSettings.backward``). ``readout.ReadOut`` turns the gradients into edges.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from workers.engine.adjoint import AdjointModel
from workers.engine.linearise import Linearised, Trace
from workers.engine.nodes import SiteColumns
from workers.engine.readout import ReadOut
from workers.engine.targets import Target, tensor_site_bound

if TYPE_CHECKING:
    from workers.engine.attribution import AttributionSettings


def row_order(rows: list[Target]) -> list[int]:
    """Canonical order: by position, then by the site a row reads, then by id (order-independence)."""
    return sorted(range(len(rows)), key=lambda i: (rows[i].pos, tensor_site_bound(rows[i].tensor), rows[i].node_id))


def edges(
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
    order = row_order(rows)
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    reuse = {} if reuse is None else reuse
    if "readout" not in reuse:
        # bf16 (autocast) is an autograd feature: those runs keep the autograd path
        use_adjoint = settings.backward == "adjoint" and settings.dtype == "fp32"
        reuse["readout"] = ReadOut(rows, index, emb_cols, pos_cols, site_cols, trace, extra, len(index))
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
            release_freed_memory()
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
        release_freed_memory()
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


def release_freed_memory() -> None:
    """Give freed heap back to the OS between cone groups (glibc keeps it otherwise, and each group's
    transient tensors have new sizes, so peak RSS would creep up by fragmentation)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

