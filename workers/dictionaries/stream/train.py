"""Training a dictionary at every chosen site of a model at once, on activations streamed from a token stream.

  - **Token stream** (:class:`PackedSequences`): the token array is cut into sequences of ``seq_len − 1``
    consecutive tokens (documents run into each other, as in packed pre-training batches), visited in a seeded
    permutation, each with BOS in front; the BOS position is dropped from the activations.
  - **One forward pass feeds every site** (``activations.iter_activations``, stopped after the last needed block).
  - **Shuffle buffer, bounded**: per site a fixed buffer of ``rows`` activations (x and y; one tensor for an
    attention SAE, whose x is y), ``rows`` = the tokens of ``sequences_per_fill`` sequences (``buffer_tokens``
    rounded up to whole forward batches). It is filled, served in a random order (a permutation seeded by the
    fill's index), ``rows // batch_size`` batches, and refilled from the next sequences. Memory:
    ``rows × Σ_sites (d_in + d_out, or d for an SAE) × 4`` bytes (:func:`buffer_bytes`), whatever the tokens.
    Every token is used once, except the last ``rows mod batch_size`` rows of each fill, which are dropped
    (none when a forward pass holds whole batches: 8 × 256 tokens with batch 1,024).
  - **Every site trains with** ``training.DictionaryTrainer``, on the same rows of each batch; the first fill is
    the initialisation sample (scales, data-point initialisation).
  - **Checkpoints** every ``checkpoint_every`` steps into ``out_dir/checkpoint.pt`` (written whole, then renamed):
    every trainer's state and the step. The step fixes the stream cursor (fill ``step // steps_per_fill``), the
    buffer's permutation (seeded by that fill's index) and the position in it, so a resumed build refills the
    current buffer with the same forward passes and ends bit-identical to an uninterrupted one (with the same
    torch thread count and device: the checkpoint records both and a resume with others is refused).
  - **Progress**: a line every ``log_every_s`` seconds (step, tokens, tokens/s of the stream and of training,
    ETA) through ``log``, and ``progress.json`` in ``out_dir``.
  - **At the end**: per site ``<name>.report.json|png`` (``training.write_report``) with held-out metrics
    (``metrics.StatsAccumulator``, fed by one forward pass over the held-out batches), the CE with every
    site spliced at once (``metrics.splice_ce``), the native set (``formats.save_dictionary_set``) and
    ``report.json``; the checkpoint is deleted.

Everything runs on ``device`` (the process's placement, ``workers/models/placement.py``): model, buffers and
dictionaries; the trainers' generators stay on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.dictionaries.activations import Site, iter_activations
from workers.dictionaries.formats import save_dictionary_set
from workers.dictionaries.metrics import StatsAccumulator, splice_ce
from workers.dictionaries.modules import DictionarySet
from workers.dictionaries.training import DictionaryTrainer, TrainConfig, site_dictionary_config, write_report

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class StreamConfig:
    seq_len: int = 257  # BOS + seq_len − 1 corpus tokens per sequence (256: 8 sequences are 2 batches of 1,024)
    sequences_per_batch: int = 8  # sequences per forward pass
    buffer_tokens: int = 16_384  # rows of each site's shuffle buffer (rounded up to whole forward passes)
    checkpoint_every: int = 200  # steps
    seed: int = 0  # order of the sequences and of each buffer fill
    log_every_s: float = 30.0

    def sequences_per_fill(self) -> int:
        per_pass = self.sequences_per_batch * (self.seq_len - 1)
        return self.sequences_per_batch * max(1, math.ceil(self.buffer_tokens / per_pass))

    def rows(self) -> int:
        return self.sequences_per_fill() * (self.seq_len - 1)


class PackedSequences:
    """Sequences of ``seq_len − 1`` consecutive tokens of ``tokens`` (a 1-D array, e.g. a memory map), BOS in
    front, in a permutation seeded by ``seed``: sequence ``i`` of the stream is chunk ``order[i]``."""

    def __init__(self, tokens: np.ndarray, seq_len: int, bos: int, seed: int = 0) -> None:
        self.tokens, self.body, self.bos = tokens, seq_len - 1, bos
        self.n = len(tokens) // self.body
        if self.n == 0:
            raise ValueError(f"{len(tokens)} tokens make no sequence of {seq_len}")
        self.order = np.random.default_rng(seed).permutation(self.n)

    def batch(self, start: int, count: int) -> torch.Tensor:
        """Sequences ``start .. start + count − 1`` of the stream, ``[count, seq_len]``."""
        if start + count > self.n:
            raise ValueError(f"the stream has {self.n:,} sequences of {self.body + 1} tokens; sequences "
                             f"{start:,}..{start + count - 1:,} were asked for: train on fewer tokens or a bigger corpus")
        rows = np.stack([np.asarray(self.tokens[i * self.body:(i + 1) * self.body]) for i in self.order[start:start + count]])
        body = torch.from_numpy(rows.astype(np.int64))
        return torch.cat([torch.full((count, 1), self.bos, dtype=torch.long), body], dim=1)


class ShuffleBuffers:
    """One buffer per site, allocated once: ``x[site]`` [rows, d_in] and ``y[site]`` [rows, d_out] (the same
    tensor for an attention SAE). :meth:`fill` overwrites them with fill ``index`` of the stream."""

    def __init__(self, model: nn.Module, sites: Sequence[Site], seqs: PackedSequences, cfg: StreamConfig,
                 dims: dict[Site, tuple[int, int]], device: torch.device) -> None:
        self.model, self.sites, self.seqs, self.cfg = model, list(sites), seqs, cfg
        rows = cfg.rows()
        self.x: dict[Site, torch.Tensor] = {}
        self.y: dict[Site, torch.Tensor] = {}
        for s in self.sites:
            d_in, d_out = dims[s]
            self.y[s] = torch.empty(rows, d_out, device=device)
            self.x[s] = self.y[s] if s[1] == "attn" else torch.empty(rows, d_in, device=device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in [*self.x.values(), *self.y.values()]}.values())

    def fill(self, index: int) -> None:
        spb, per_fill = self.cfg.sequences_per_batch, self.cfg.sequences_per_fill()
        start = index * per_fill
        batches = (self.seqs.batch(start + j, spb) for j in range(0, per_fill, spb))
        at = 0
        device = next(iter(self.y.values())).device
        for got, acts in iter_activations(self.model, batches, self.sites, drop_positions=1, device=device):
            for s in self.sites:
                x, y = acts[s]
                self.y[s][at:at + got] = y
                if self.x[s] is not self.y[s]:
                    self.x[s][at:at + got] = x
            at += got
        assert at == self.cfg.rows(), (at, self.cfg.rows())


def buffer_bytes(cfg: StreamConfig, dims: dict[Site, tuple[int, int]]) -> int:
    """The shuffle buffers' memory: rows × Σ_sites (d_in + d_out, d for an attention SAE) × 4 bytes."""
    return cfg.rows() * sum((d_out if site == "attn" else d_in + d_out) for (_, site), (d_in, d_out) in dims.items()) * 4


def site_dims(model: nn.Module, sites: Sequence[Site]) -> dict[Site, tuple[int, int]]:
    """(d_in, d_out) per site: the residual width for both (the sites read and write the residual stream)."""
    d = int(model.config.hidden_size)
    return {s: (d, d) for s in sites}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_stream(
    model: nn.Module,
    seqs: PackedSequences,
    sites: Sequence[Site],
    train_cfg: TrainConfig | dict[str, TrainConfig],
    cfg: StreamConfig,
    out_dir: Path,
    heldout_batches: list[torch.Tensor],
    *,
    tokens: int,
    model_name: str = "",
    model_hash: str = "",
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[DictionarySet, dict]:
    """Train a dictionary per site on ``tokens`` streamed tokens (module doc) into ``out_dir``, resuming from its
    checkpoint if one is there. ``train_cfg`` may map the site kind ("attn" / "mlp") to its TrainConfig; its
    ``steps`` is replaced by ``tokens // batch_size`` (every site must use the same batch size). Returns the set
    and the report (also ``out_dir/report.json``)."""
    out_dir = Path(out_dir)
    device = torch.device(device)
    sites = list(sites)
    tcfgs = {s: (train_cfg[s[1]] if isinstance(train_cfg, dict) else train_cfg) for s in sites}
    batch = {t.batch_size for t in tcfgs.values()}
    if len(batch) != 1:
        raise ValueError(f"every site must use the same batch size (one stream feeds them all); got {sorted(batch)}")
    B = batch.pop()
    steps = tokens // B
    tcfgs = {s: replace(t, steps=steps) for s, t in tcfgs.items()}
    rows = cfg.rows()
    per_fill = rows // B
    if per_fill == 0 or steps == 0:
        raise ValueError(f"the buffer ({rows} rows) and the tokens ({tokens:,}) must hold at least one batch of {B}")
    dims = site_dims(model, sites)
    threads = torch.get_num_threads()
    ckpt_path = out_dir / CHECKPOINT
    trainers: dict[Site, DictionaryTrainer] = {}
    step = 0
    timing = {"stream_seconds": 0.0, "train_seconds": 0.0, "checkpoint_seconds": 0.0}
    resumed_from = None
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        if (state["threads"], state["device"]) != (threads, str(device)):
            raise RuntimeError(f"{ckpt_path} was written with {state['threads']} torch threads on {state['device']}; "
                               f"this process has {threads} on {device}: resume with the same (or delete it)")
        trainers = {tuple(s): DictionaryTrainer.from_state_dict(st, device) for s, st in state["trainers"]}  # type: ignore[misc]
        step, timing, resumed_from = int(state["step"]), state["timing"], int(state["step"])
        log(f"resumed from {ckpt_path} at step {step:,}/{steps:,}")
    buffers = ShuffleBuffers(model, sites, seqs, cfg, dims, device)
    log(f"{len(sites)} sites, {steps:,} steps of {B} tokens ({steps * B:,} tokens), shuffle buffers "
        f"{rows:,} rows = {buffers.nbytes() / 2**20:,.0f} MiB, on {device} with {threads} threads")
    t_log = time.time()
    tokens_at_start = step * B
    t_start = time.time()
    while step < steps:
        fill = step // per_fill
        t0 = time.time()
        buffers.fill(fill)
        timing["stream_seconds"] += time.time() - t0
        if not trainers:
            for s in sites:
                dc = site_dictionary_config(s[0], s[1], *dims[s], tcfgs[s], model_name, train_tokens=steps * B,
                                            stream=asdict(cfg))
                trainers[s] = DictionaryTrainer(dc, buffers.x[s], buffers.y[s], tcfgs[s], device=device)
        perm = torch.randperm(rows, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + fill)).to(device)
        for j in range(step - fill * per_fill, per_fill):
            if step >= steps:
                break
            idx = perm[j * B:(j + 1) * B]
            t0 = time.time()
            for s in sites:
                trainers[s].step(buffers.x[s][idx], buffers.y[s][idx])
            timing["train_seconds"] += time.time() - t0
            step += 1
            if step % cfg.checkpoint_every == 0 and step < steps:
                t0 = time.time()
                _atomic_save({"step": step, "fill": step // per_fill, "position": step % per_fill,
                              "sequences_used": (step // per_fill) * cfg.sequences_per_fill(), "threads": threads,
                              "device": str(device), "timing": timing,
                              "trainers": [(list(s), trainers[s].state_dict()) for s in sites]}, ckpt_path)
                timing["checkpoint_seconds"] += time.time() - t0
            if time.time() - t_log >= cfg.log_every_s or step == steps:
                t_log = time.time()
                done = step * B
                rate = (done - tokens_at_start) / max(time.time() - t_start, 1e-9)
                prog = {"step": step, "steps": steps, "tokens": done,
                        "stream_tokens_per_second": done / max(timing["stream_seconds"], 1e-9) if timing["stream_seconds"] else None,
                        "train_tokens_per_second": done / max(timing["train_seconds"], 1e-9),
                        "tokens_per_second": rate, "eta_seconds": (steps - step) * B / max(rate, 1e-9)}
                (out_dir / "progress.json").write_text(json.dumps(prog, indent=2))
                log(f"step {step:,}/{steps:,}  {done:,} tokens  {rate:,.0f} tok/s  (stream "
                    f"{prog['stream_tokens_per_second'] or 0:,.0f}, training {prog['train_tokens_per_second']:,.0f} tok/s)  "
                    f"ETA {prog['eta_seconds'] / 60:,.1f} min")
    dicts = {}
    report: dict[str, Any] = {"model_name": model_name, "stream": asdict(cfg), "tokens": steps * B, "steps": steps,
                              "sites": [f"L{layer}.{site}" for layer, site in sites], "torch_threads": threads,
                              "device": str(device), "buffer_bytes": buffers.nbytes(), "resumed_from_step": resumed_from,
                              **timing, "dictionaries": {}}
    del buffers
    hists = {}
    for s in sites:
        dicts[s], hists[s] = trainers[s].finish()
    t0 = time.time()
    # One forward pass over the held-out batches feeds every site's stats (on the CPU, where finish() left the
    # dictionaries): memory is one batch's activations, whatever the number of sites.
    acc = {s: StatsAccumulator(dicts[s]) for s in sites}
    with closing(iter_activations(model, heldout_batches, sites, drop_positions=1)) as batches:  # hooks off on error
        for _, acts in batches:
            for s in sites:
                acc[s].add(*acts[s])
    for s in sites:
        d, stats = dicts[s], acc[s].result().to_dict()
        report["dictionaries"][d.cfg.name] = {**stats, "d_dict": d.cfg.d_dict, "train_tokens": steps * B,
                                              "train_seconds": hists[s].seconds}
        write_report(d, hists[s], stats, out_dir)
    ds = DictionarySet(dicts, model_name=model_name, model_hash=model_hash)
    for _, d in ds:
        d.to(device)
    # One sequence per forward: the logits of a 262k vocabulary are the biggest tensor of the CE.
    one_by_one = [b[i:i + 1].to(device) for b in heldout_batches for i in range(b.shape[0])]
    report["cross_entropy"] = splice_ce(model, ds, one_by_one, per_site=False)
    report["eval_seconds"] = time.time() - t0
    for _, d in ds:
        d.cpu()
    save_dictionary_set(ds, out_dir)
    report["content_hash"] = ds.content_hash()
    report["peak_rss_bytes"] = _peak_rss_bytes()
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    ckpt_path.unlink(missing_ok=True)
    return ds, report
