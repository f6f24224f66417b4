"""The engine on the real Gemma 3 270M (GGUF Q4_K_M weights dequantised to fp32, workers/models/gguf.py) with
calibrated random transcoders of 16,384 features per layer (~50 active per token per layer), under a node
budget: seconds and peak RSS above the loaded model, explicit adjoint against the autograd fallback.

    ~/.cache/circuit-atlas/venv/bin/python bench/gemma_real.py [--lengths 64] [--budgets 256 2048]
        [--backwards adjoint vmap] [--threads 2]

Transcoders: W_enc rows unit norm, W_dec rows scaled to the layer's mean MLP-output norm / sqrt(50),
b_enc per feature at the quantile that leaves ``--active`` features per token on calibration prompts
(random token ids; BOS first). Prompts: random token ids, BOS first, held out from the calibration ones.
Each (length, budget, backward) runs once after one warm-up graph (which also runs the adjoint's self-check).
circuit-tracer is not run here: TransformerLens loads Gemma only by its hub name, and this machine is offline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.engine_speed import _reset_peak_rss, _rss_now_gb, _status_gb  # noqa: E402


def calibrated_transcoders(lin, model, n_feat: int, active: float, seed: int, n_calib: int):  # noqa: ANN001, ANN201
    import torch

    from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet

    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    bos = int(model.config.bos_token_id or 2)
    calib = [torch.cat([torch.tensor([bos]), torch.randint(3, min(vocab, 50_000), (127,), generator=gen)])
             for _ in range(n_calib)]
    xs: dict[int, list[torch.Tensor]] = {}
    outs: dict[int, list[torch.Tensor]] = {}
    for ids in calib:
        tr = lin.trace(ids)
        for (layer, site), rec in tr.sites.items():
            if site == "mlp":
                xs.setdefault(layer, []).append(rec.x[1:].float())
                outs.setdefault(layer, []).append(rec.out[1:].float())
    d = model.config.hidden_size
    dicts = {}
    for layer in sorted(xs):
        x = torch.cat(xs[layer])
        out_norm = float(torch.cat(outs[layer]).norm(dim=-1).mean())
        W_enc = torch.randn(n_feat, d, generator=gen)
        W_enc /= W_enc.norm(dim=-1, keepdim=True)
        W_dec = torch.randn(n_feat, d, generator=gen)
        W_dec *= out_norm / active**0.5 / W_dec.norm(dim=-1, keepdim=True)
        pre = x @ W_enc.T
        k = max(1, round((1 - active / n_feat) * (pre.shape[0] - 1)) + 1)
        b_enc = -pre.kthvalue(k, dim=0).values
        tc = Dictionary(DictionaryConfig(kind="transcoder", site="mlp", layer=layer, d_in=d, d_out=d, d_dict=n_feat))
        with torch.no_grad():
            tc.W_enc.copy_(W_enc)
            tc.W_dec.copy_(W_dec)
            tc.b_enc.copy_(b_enc)
            tc.b_dec.zero_()
        dicts[(layer, "mlp")] = tc
    return DictionarySet(dicts, model_name="gemma-3-270m")


def main() -> None:
    import torch

    from workers.engine import AttributionSettings, Linearised, attribute
    from workers.engine.adjoint import AdjointModel
    from workers.models.gguf import load_gemma3_270m

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64])
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--backwards", nargs="+", default=["adjoint", "vmap"])
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--active", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-prompts", type=int, default=32,
                    help="128-token calibration prompts (4 gave ~157 active per token instead of 50: too few "
                         "samples for a 0.3%% quantile)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, _ = load_gemma3_270m()
    lin = Linearised(model, calibrated_transcoders(Linearised(model, _empty()), model, a.features, a.active, 0,
                                                      a.calib_prompts))
    print(f"loaded Gemma 3 270M + {len(lin.dictionaries.dictionaries)} transcoders of {a.features} in "
          f"{time.time() - t0:.0f} s; RSS {_rss_now_gb():.2f} GB; load {os.getloadavg()[0]:.1f}", flush=True)
    gen = torch.Generator().manual_seed(1)
    bos = int(model.config.bos_token_id or 2)
    results = []
    for length in a.lengths:
        ids = torch.cat([torch.tensor([bos]), torch.randint(3, 50_000, (length - 1,), generator=gen)])
        tr = lin.trace(ids, fold_first=True)
        n_active = sum(rec.n_active for rec in tr.sites.values())
        print(f"{length} tokens: {n_active} active features ({n_active / 18 / (length - 1):.1f} per token per layer); "
              f"adjoint supported: {AdjointModel.build(lin, tr) is not None}", flush=True)
        attribute(lin, ids, settings=AttributionSettings(max_feature_nodes=16))  # warm-up
        for budget in a.budgets:
            for backward in a.backwards:
                s = AttributionSettings(max_feature_nodes=budget, backward=backward)  # type: ignore[arg-type]
                rss0 = _rss_now_gb()
                _reset_peak_rss()
                t1, c1 = time.perf_counter(), time.process_time()
                g = attribute(lin, ids, settings=s)
                wall, cpu = time.perf_counter() - t1, time.process_time() - c1
                r = {"length": length, "budget": budget, "backward": backward, "wall_s": wall, "cpu_s": cpu,
                     "peak_above_before_gb": _status_gb("VmHWM") - rss0, "nodes": g.n_nodes,
                     "edges": int(g.adjacency.values().numel()), "budget_info": g.provenance["budget"],
                     "timings_s": g.provenance["timings_s"], "load": os.getloadavg()[0]}
                results.append(r)
                print(f"  budget {budget:5d} {backward:7s}: {wall:7.1f} s wall {cpu:7.1f} CPU s, peak "
                      f"{r['peak_above_before_gb']:.2f} GB above the loaded model, {r['edges']} edges, "
                      f"load {r['load']:.1f}", flush=True)
                del g
    print(json.dumps(results, indent=1))


def _empty():  # noqa: ANN202
    from workers.dictionaries.modules import DictionarySet

    return DictionarySet({}, model_name="gemma-3-270m")


if __name__ == "__main__":
    main()
