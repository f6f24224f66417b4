"""Issue #16: training recipes for Gemma 3 270M's 4,096-feature TopK dictionaries, compared on the same cached
activations (prints one JSON line per site and recipe; not a test).

Activations of the real-text corpus' train split are collected once through the streaming trainer's token stream
(``PackedSequences``, BOS dropped) at the chosen sites, plus the 128 held-out sequences the Gemma set is measured on
(32,768 tokens), and cached as one file under ``--cache`` (≈ 3.4 GB per site at the default 655,360 tokens). Each
recipe (a ``TrainConfig`` override, see RECIPES) then trains one dictionary per site with ``DictionaryTrainer``, every
training token used once in a seeded order, batch 1,024, and reports the held-out explained variance, L0 and dead
fraction, the training window's dead fraction at the last step, and the EV / dead-fraction curves.

    python bench/dictionary_recipe.py --sites 4.attn,4.mlp,9.attn,9.mlp --tokens 327680 \
        --recipes zoo,random,random_centred
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from workers.dictionaries.metrics import reconstruction_stats
from workers.dictionaries.training import DictionaryTrainer, TrainConfig, site_dictionary_config

BASE = TrainConfig(d_dict=4096, activation="topk", k=32, batch_size=1024, lr=2e-3)
RECIPES = {
    "zoo": {},  # the zoo's recipe at this width: data-point initialisation, raw inputs
    "random": {"init": "random"},
    "random_lr5e-4": {"init": "random", "lr": 5e-4},
    "random_centred": {"init": "random", "centre_inputs": True},  # the Gemma set's recipe (gemma/full.py)
    "random_centred_lr1e-3": {"init": "random", "centre_inputs": True, "lr": 1e-3},
    "zoo_centred": {"centre_inputs": True},
    "random_centred_skip": {"init": "random", "centre_inputs": True, "skip": True},  # transcoders only
}


def collect(sites: list[tuple[int, str]], tokens: int, path: Path) -> dict:
    from workers.dictionaries.activations import collect_activations, iter_activations
    from workers.dictionaries.gemma.full import GemmaDictionarySpec
    from workers.models.gguf import load_gemma3_270m
    from workers.text_corpus.build import build_text_corpus

    spec = GemmaDictionarySpec()  # the full set's stream and held-out sample
    corpus = build_text_corpus(spec.corpus, progress=False)
    model, tok = load_gemma3_270m()
    seqs, held_batches = spec.sequences(corpus, int(tok.bos_token_id))
    train = {s: (torch.empty(tokens, 640), torch.empty(tokens, 640)) for s in sites}
    at, t0 = 0, time.time()
    per_pass = spec.sequences_per_batch
    passes = (seqs.batch(j, per_pass) for j in range(0, tokens // (spec.seq_len - 1), per_pass))
    for got, acts in iter_activations(model, passes, sites, drop_positions=1):
        for s in sites:
            train[s][0][at:at + got], train[s][1][at:at + got] = acts[s]
        at += got
    data = {"train": train, "held": collect_activations(model, held_batches, sites, drop_positions=1)}
    torch.save(data, path)
    print(json.dumps({"collected_tokens": at, "seconds": round(time.time() - t0)}), flush=True)
    return data


def run(site: tuple[int, str], X: torch.Tensor, Y: torch.Tensor, Xh: torch.Tensor, Yh: torch.Tensor,
        recipe: str, tokens: int) -> dict:
    tc = replace(BASE, **RECIPES[recipe])
    tc = replace(tc, steps=tokens // tc.batch_size)
    cfg = site_dictionary_config(site[0], site[1], X.shape[1], Y.shape[1], tc, "gemma3-270m")
    t0 = time.time()
    trainer = DictionaryTrainer(cfg, X[:16384], Y[:16384], tc)
    order = torch.randperm(tokens, generator=torch.Generator().manual_seed(0))
    for i in range(tc.steps):
        rows = order[i * tc.batch_size:(i + 1) * tc.batch_size]
        trainer.step(X[rows], Y[rows])
    d, hist = trainer.finish()
    st = reconstruction_stats(d, Xh, Yh)
    return {"site": cfg.name, "recipe": recipe, "tokens": tc.steps * tc.batch_size,
            "heldout_ev": round(st.explained_variance, 4), "l0": round(st.l0, 2),
            "heldout_dead": round(st.dead_fraction, 4), "train_dead_last": round(hist.dead_fraction[-1], 4),
            "ev_at_step0": round(hist.explained_variance[0], 2),
            "ev_curve": [round(v, 3) for v in hist.explained_variance[::4]],
            "dead_curve": [round(v, 3) for v in hist.dead_fraction[::4]], "seconds": round(time.time() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", default="4.attn,4.mlp,9.attn,9.mlp")
    ap.add_argument("--tokens", type=int, default=327_680, help="training tokens per recipe")
    ap.add_argument("--collect-tokens", type=int, default=655_360, help="tokens of activations cached per site")
    ap.add_argument("--recipes", default="zoo,random,random_centred")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/circuit-atlas/bench/recipe-acts")
    args = ap.parse_args()
    sites = [(int(s.split(".")[0]), s.split(".")[1]) for s in args.sites.split(",")]
    if args.tokens > args.collect_tokens:
        ap.error("--tokens must not exceed --collect-tokens")
    args.cache.mkdir(parents=True, exist_ok=True)
    names = [f"{layer}{site}" for layer, site in sites]
    # any cached file of these tokens that holds every site asked for (named by its sites)
    cached = [p for p in sorted(args.cache.glob(f"*-{args.collect_tokens}.pt"))
              if set(names) <= set(p.name.rsplit("-", 1)[0].split("_"))]
    path = cached[0] if cached else args.cache / f"{'_'.join(names)}-{args.collect_tokens}.pt"
    data = torch.load(path, mmap=True) if path.is_file() else collect(sites, args.collect_tokens, path)
    for site in sites:
        X, Y = data["train"][site]
        Xh, Yh = data["held"][site]
        for recipe in args.recipes.split(","):
            print(json.dumps(run(site, X, Y, Xh, Yh, recipe, args.tokens)), flush=True)


if __name__ == "__main__":
    main()
