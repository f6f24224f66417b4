"""Direct-effect adjacency from batched leaf gradients of the frozen model (DESIGN.md §2): the public
``attribute`` (prompt → graph) and ``build_graph`` (traced prompt → graph), and their settings.

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

Where each part lives: the node table (``nodes.py``), bias leaves (``bias.py``), the backward strategies
(``backward.py``), the edge read-out (``readout.py``), the CSR writer (``csr.py``), the node budget
(``budget.py``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from workers.engine.backward import edges
from workers.engine.bias import bias_contributions, read_rows
from workers.engine.budget import budgeted_graph
from workers.engine.csr import CSRWriter
from workers.engine.graph import Graph
from workers.engine.linearise import Linearised, Trace, site_order
from workers.engine.nodes import assemble, lay_out
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
    # under a budget: the read-out's decoder operands (a_s W_dec[s], all sites) are held when they fit in this many
    # GB, else gathered again for every batch (nodes.DecoderOperand: memory O(one site), read-out 2-3x slower)
    operand_memory_gb: float = 4.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def on_model_device(fn):
    """Run ``fn(lin, ...)`` with ``lin``'s device as torch's default device, so that every tensor the engine
    creates lives beside the model (ATLAS_DEVICE); the Graph is handed back on the CPU (``nodes.assemble``)."""

    @functools.wraps(fn)
    def run(lin: Linearised, *args, **kwargs):
        if lin.device.type == "cpu":  # torch's default already (the device context costs a hook per op)
            return fn(lin, *args, **kwargs)
        with torch.device(lin.device):
            return fn(lin, *args, **kwargs)

    return run


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
    layout = lay_out(lin, trace, targets, settings)
    nodes, index, row_targets, site_cols = layout.nodes, layout.index, layout.row_targets, layout.site_cols
    n = len(nodes.ids)
    t_nodes = time.perf_counter()
    if budget is not None:
        return budgeted_graph(lin, trace, targets, layout, settings, progress, provenance, t0, t_nodes)

    # the bias leaf, and the value of every row (clean run; equal to the frozen run by the splice identity)
    biases = bias_contributions(lin, trace, row_targets, grouped=settings.bias == "grouped")
    with torch.no_grad():
        run = lin.frozen_forward(trace, require_grad=False)
        values = read_rows(run, row_targets)[0]
    t_bias = time.perf_counter()

    r_all = torch.tensor([index[t.node_id] for t in row_targets], dtype=torch.long)
    bias_c = torch.tensor([layout.bias_cols[g] for g in biases], dtype=torch.long)
    bias_v = torch.stack([biases[g].float() for g in biases], dim=1)  # [R, G]
    # every structurally possible edge is stored (exact zeros included), so each row's length is known
    # before any backward pass: the CSR arrays are allocated once and filled in place
    counts = torch.zeros(n, dtype=torch.long)
    site_cum = {sc.key: torch.cumsum((sc.feat_cols >= 0).sum(1) + 1, 0) for sc in site_cols}  # feats+err ≤ p
    n_leaf_pos = 1 + (1 if layout.pos_cols is not None else 0)
    for t, r in zip(row_targets, r_all.tolist(), strict=True):
        bound = tensor_site_bound(t.tensor)
        c = n_leaf_pos * (t.pos + 1) + len(bias_c)
        for sc in site_cols:
            if site_order(sc.key) < bound:
                c += int(site_cum[sc.key][t.pos])
        counts[r] = c
    writer = CSRWriter(counts)
    edges(lin, trace, row_targets, index, layout.emb_cols, layout.pos_cols, site_cols, settings, progress,
          extra=(bias_c, bias_v), sink=writer.write_rows)
    t_edges = time.perf_counter()
    adj = writer.finish()
    value = torch.full((n,), float("nan"))
    value[r_all] = values
    timings = {"nodes": t_nodes - t0, "bias": t_bias - t_nodes, "edges": t_edges - t_bias}
    return assemble(lin, trace, targets, nodes, index, adj, value, settings, provenance, timings, t0)


__all__ = ["AttributionSettings", "attribute", "build_graph"]


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
        "device": str(lin.device),
        "weights_dtype": str(lin.dtype).removeprefix("torch."),
        "bos_folded": bool(fold),
    }
    g = build_graph(lin, trace, resolved, settings, progress, prov)
    g.prompt = text
    if tokenizer is not None:
        g.token_strings = [tokenizer.decode([int(i)]) for i in input_ids.tolist()]
    g.provenance["timings_s"]["trace"] = t_trace
    g.provenance["timings_s"]["total"] = time.perf_counter() - t0
    return g
