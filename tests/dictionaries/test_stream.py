"""Streaming training (workers/dictionaries/stream): the stepper against train_dictionary, the bounded shuffle
buffer against activations computed directly, a build SIGKILLed after its first checkpoint resuming to the
uninterrupted result, and the Gemma set's cache key."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.dictionaries.stream_build import CFG, SITES, heldout_batches, tiny_model
from workers.dictionaries.activations import collect_activations
from workers.dictionaries.formats import load_dictionary_set
from workers.dictionaries.metrics import reconstruction_stats
from workers.dictionaries.modules import DictionaryConfig
from workers.dictionaries.stream.train import (
    CHECKPOINT,
    PackedSequences,
    ShuffleBuffers,
    buffer_bytes,
    site_dims,
)
from workers.dictionaries.training import DictionaryTrainer, TrainConfig, train_dictionary

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("activation,skip,centre", [("topk", True, False), ("jumprelu", False, False), ("topk", True, True)])
def test_the_stepper_saved_and_reloaded_mid_training_is_train_dictionary(activation, skip, centre):
    # The stepper's loop, with its state saved (torch.save) and a new trainer loaded from it after a resampling
    # step, ends bit-identical to train_dictionary: weights, history, dead features resampled on the way.
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3000, 24, generator=g) @ torch.randn(24, 24, generator=g)
    Y = torch.tanh(X) @ torch.randn(24, 24, generator=g)
    tc = TrainConfig(d_dict=96, k=4, activation=activation, skip=skip, steps=240, batch_size=64,
                     dead_after_tokens=500, resample_every=50, log_every=7, centre_inputs=centre,
                     init="random" if centre else "data")
    cfg = DictionaryConfig(kind="transcoder", site="mlp", layer=0, d_in=24, d_out=24, d_dict=96, activation=activation,
                           k=4 if activation == "topk" else None, skip=skip)
    ref, ref_hist = train_dictionary(cfg, X, Y, tc, progress=False)
    trainer = DictionaryTrainer(cfg, X, Y, tc)
    for step in range(tc.steps):
        if step == 101:
            buf = io.BytesIO()
            torch.save(trainer.state_dict(), buf)
            buf.seek(0)
            trainer = DictionaryTrainer.from_state_dict(torch.load(buf, weights_only=False))
        rows = torch.randint(0, X.shape[0], (tc.batch_size,), generator=trainer.gen)
        trainer.step(X[rows], Y[rows])
    d, hist = trainer.finish(prune_X=X)
    assert d.content_hash() == ref.content_hash()
    assert (hist.loss, hist.l0, hist.dead_fraction) == (ref_hist.loss, ref_hist.l0, ref_hist.dead_fraction)
    if activation == "topk":
        assert max(ref_hist.dead_fraction) > 0  # resampling happened before and after the reload


def test_the_shuffle_buffer_is_bounded_and_holds_the_streamed_sequences():
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(1, 64, 5_000)
    seqs = PackedSequences(tokens, CFG.seq_len, bos=0, seed=3)
    dims = site_dims(model, SITES)
    buffers = ShuffleBuffers(model, SITES, seqs, CFG, dims, torch.device("cpu"))
    # 256 rows (4 passes of 4 sequences × 16 tokens); an SAE's x is its y: (32 + 32·2 + 32 + 32·2)·4 bytes a row
    assert CFG.rows() == 256
    assert buffers.nbytes() == buffer_bytes(CFG, dims) == 256 * 192 * 4
    pointers = {s: (buffers.x[s].data_ptr(), buffers.y[s].data_ptr()) for s in SITES}
    for fill in (0, 2):
        buffers.fill(fill)
        per_fill = CFG.sequences_per_fill()
        batches = [seqs.batch(fill * per_fill + j, 4) for j in range(0, per_fill, 4)]
        direct = collect_activations(model, batches, SITES, drop_positions=1)
        for s in SITES:
            assert torch.equal(buffers.x[s], direct[s][0]) and torch.equal(buffers.y[s], direct[s][1])
        # refilled in place: no memory grows with the tokens streamed
        assert {s: (buffers.x[s].data_ptr(), buffers.y[s].data_ptr()) for s in SITES} == pointers
    # the sequences are chunks of the token array, BOS first, in the seeded order, each used once
    first = seqs.batch(0, seqs.n)
    assert (first[:, 0] == 0).all()
    assert torch.equal(first[:, 1:].reshape(-1).sort().values,
                       torch.from_numpy(tokens[: seqs.n * 16].astype(np.int64)).sort().values)
    with pytest.raises(ValueError, match="sequences"):
        seqs.batch(seqs.n - 1, 2)


def _build(root: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "tests/dictionaries/stream_build.py"), str(root), str(pause)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_build_killed_after_its_first_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    whole = _build(tmp_path / "whole", 0.0)
    out, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, out
    killed = _build(tmp_path / "killed", 0.05)
    ckpt = tmp_path / "killed" / "tiny.partial" / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert ckpt.is_file(), "the build wrote no checkpoint"
    killed.send_signal(signal.SIGKILL)
    out, _ = killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL, out
    assert not (tmp_path / "killed" / "tiny").exists()
    resumed = _build(tmp_path / "killed", 0.0)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from" in out and "at step 10/" in out, out  # it continued, it did not start over
    a, b = tmp_path / "whole" / "tiny", tmp_path / "killed" / "tiny"
    names = sorted(p.name for p in a.glob("*.safetensors"))
    assert len(names) == 4 and names == sorted(p.name for p in b.glob("*.safetensors"))
    for name in names:
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    ra, rb = json.loads((a / "report.json").read_text()), json.loads((b / "report.json").read_text())
    assert ra["content_hash"] == rb["content_hash"]
    assert rb["resumed_from_step"] == 10 and ra["resumed_from_step"] is None
    for name in ra["dictionaries"]:
        assert ra["dictionaries"][name]["explained_variance"] == rb["dictionaries"][name]["explained_variance"]
    assert not (b / CHECKPOINT).exists()
    # the held-out stats, from one forward pass for every site, are each site's stats on its own activations
    ds, held = load_dictionary_set(a), collect_activations(tiny_model(), heldout_batches(), SITES, drop_positions=1)
    for key, d in ds:
        want = reconstruction_stats(d, *held[key]).to_dict()
        got = ra["dictionaries"][d.cfg.name]
        assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-6), d.cfg.name


def test_the_gemma_key_changes_with_the_spec_and_the_corpus_but_not_the_checkpoint_interval():
    from workers.dictionaries.gemma.full import GemmaDictionarySpec, gemma_key

    spec = GemmaDictionarySpec()
    key = gemma_key(spec, "corpus-a")
    assert gemma_key(GemmaDictionarySpec(), "corpus-a") == key
    changed = [replace(spec, layers=(4, 9)), replace(spec, d_dict=2048), replace(spec, k=16),
               replace(spec, tokens=spec.tokens + 1024), replace(spec, lr=1e-3), replace(spec, buffer_tokens=8192),
               replace(spec, sites=("mlp",)), replace(spec, seed=1), replace(spec, resample_until=0.9),
               replace(spec, skip_transcoders=False)]
    keys = {gemma_key(s, "corpus-a") for s in changed} | {gemma_key(spec, "corpus-b"), key}
    assert len(keys) == len(changed) + 2
    assert gemma_key(replace(spec, checkpoint_every=7), "corpus-a") == key
    assert {t.resample_until for t in replace(spec, resample_until=0.9).train_config().values()} == {0.9}
    assert spec.train_config()["mlp"].skip and not replace(spec, skip_transcoders=False).train_config()["mlp"].skip
    with pytest.raises(ValueError, match="layers"):
        GemmaDictionarySpec(layers=(18,))
