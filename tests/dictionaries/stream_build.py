"""A real streaming build at a tiny spec, run as its own process by the resume fault test (test_stream.py):
a seeded random 2-layer GPT-2 and random tokens, built with ``build_once(..., resume=True)`` into ``argv[1]``.
``argv[2]``: seconds to sleep at every progress line (so the test can kill it mid-build)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from workers.cached_build import build_once
from workers.dictionaries.stream.train import PackedSequences, StreamConfig, train_stream
from workers.dictionaries.training import TrainConfig

SITES = [(0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp")]
CFG = StreamConfig(seq_len=17, sequences_per_batch=4, buffer_tokens=256, checkpoint_every=10, log_every_s=0.0)
TCFG = TrainConfig(d_dict=64, k=4, batch_size=32, dead_after_tokens=1000, resample_every=20, log_every=5)
TOKENS = 32 * 120


def tiny_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def heldout_batches() -> list[torch.Tensor]:
    return list(torch.from_numpy(np.random.default_rng(1).integers(1, 64, (8, 17))).split(4))


def build(out: Path, pause: float = 0.0) -> Path:
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(1, 64, 20_000)

    def log(msg: str) -> None:
        print(msg, flush=True)
        time.sleep(pause)

    def run(partial: Path) -> None:
        train_stream(model, PackedSequences(tokens, CFG.seq_len, bos=0), SITES, TCFG, CFG, partial, heldout_batches(),
                     tokens=TOKENS, model_name="tiny", log=log)

    return build_once(out, "tiny", run, resume=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(build(Path(sys.argv[1]), float(sys.argv[2])))
