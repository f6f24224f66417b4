"""Engine speed on the issue #4 benchmark model: seconds per graph and peak RSS for prompts of 16, 64
and 256 tokens (all active features), plus the floor: one forward + backward of the same model.

Build the model first (bench/make_bench_model.py), then::

    ~/.cache/circuit-atlas/venv/bin/python bench/engine_speed.py [--bench DIR] [--lengths 16 64 256]
        [--batch-size 32] [--cone-chunk 16] [--threads 1] [--repeats 2] [--bf16] [--backward adjoint|vmap]
        [--max-feature-nodes N] [--device cpu|cuda|cuda:N] [--dtype fp32|bf16]

Each length runs in a fresh subprocess, so its peak RSS (ru_maxrss: imports and loading included) is its
own; the RSS after imports and after loading model and dictionaries are reported too. ``--repeats 0``:
one timed run, no warm-up (the long cases). Prints one line per length and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Import ``workers`` from the checkout this script lives in, not wherever the editable install points.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _one(bench: Path, length: int, batch_size: int, cone_chunk: int, threads: int, repeats: int, bf16: bool,
         backward: str = "adjoint", max_feature_nodes: int | None = None, device: str = "cpu",
         dtype: str = "fp32", clt: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine.attribution import AttributionSettings, attribute, build_graph
    from workers.engine.linearise import Linearised
    from workers.models.placement import Placement

    torch.set_num_threads(threads)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    model = AutoModelForCausalLM.from_pretrained(bench / "model", dtype=torch.float32).eval()
    dicts = load_dictionary_set(bench / (f"{clt}_dictionaries" if clt else "dictionaries"), model)
    lin = Linearised(model, dicts).place(Placement(device, dtype))
    cuda = lin.device.type == "cuda"
    rss_loaded = _rss_now_gb()
    _reset_peak_rss()  # the peak of what follows, not of loading's transient copies
    if cuda:
        torch.cuda.synchronize()
        gpu_loaded = torch.cuda.memory_allocated(lin.device) / 1e9
        torch.cuda.reset_peak_memory_stats(lin.device)
    prompts = json.loads((bench / "prompts.json").read_text())
    ids = torch.tensor(prompts[str(length)] if str(length) in prompts else prompts["prompts"][str(length)])
    settings = AttributionSettings(batch_size=batch_size, cone_chunk=cone_chunk, dtype="bf16" if bf16 else "fp32",
                                   backward=backward, max_feature_nodes=max_feature_nodes)  # type: ignore[arg-type]
    times, cpu = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    g = attribute(lin, ids, settings=settings)  # warm-up (timed only with --repeats 0)
    if repeats == 0:
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for _ in range(repeats):
        del g  # never hold two graphs: peak RSS is that of one graph
        t0, c0 = time.perf_counter(), time.process_time()
        g = attribute(lin, ids, settings=settings)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # the floor: one plain forward + backward of the model on the prompt
    floor = []
    emb = model.get_input_embeddings()
    for _ in range(3):
        t0 = time.perf_counter()
        x = emb(ids[None].to(lin.device)).detach().requires_grad_(True)
        out = model(inputs_embeds=x).logits[0, -1].sum()
        out.backward()
        if cuda:
            torch.cuda.synchronize()
        floor.append(time.perf_counter() - t0)
    n_feat = sum(1 for k in g.kinds if k == "feat")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB
    res = {
        "length": length,
        "seconds_per_graph": min(times),
        "seconds_all": times,
        "cpu_seconds_per_graph": min(cpu),
        "floor_forward_backward_s": min(floor),
        "n_nodes": g.n_nodes,
        "n_features": n_feat,
        "n_targets": len(g.targets),
        "nnz": int(g.adjacency.values().numel()),
        "timings_s": g.provenance["timings_s"],
        "peak_rss_gb": peak,
        "rss_after_imports_gb": rss_imports,
        "peak_rss_above_imports_gb": peak - rss_imports,
        "rss_after_load_gb": rss_loaded,
        "peak_rss_above_load_gb": _status_gb("VmHWM") - rss_loaded,
        "budget": g.provenance.get("budget"),
        "backward": g.provenance["settings"]["backward"],
        "settings": settings.to_dict(),
        "threads": threads,
        "device": str(lin.device),
        "weights_dtype": dtype,
    }
    mem = (g.provenance.get("budget") or {}).get("memory_bytes")
    if mem:  # the README's memory formula evaluated on this run's counts, against the measured peak
        res["predicted_above_load_gb"] = {k: v / 1e9 for k, v in mem.items()}
    if cuda:  # GPU memory above the loaded model and dictionaries (torch's allocator)
        res["gpu_name"] = torch.cuda.get_device_name(lin.device)
        res["gpu_after_load_gb"] = gpu_loaded
        res["gpu_peak_above_load_gb"] = torch.cuda.max_memory_allocated(lin.device) / 1e9 - gpu_loaded
    if bf16:  # measured error of bf16 edges against fp32
        trace = lin.trace(ids, fold_first=True)
        from workers.engine.targets import top_logits

        tg = top_logits(lin, trace)
        g32 = build_graph(lin, trace, tg, AttributionSettings(batch_size=batch_size, cone_chunk=cone_chunk))
        g16 = build_graph(lin, trace, tg, settings)
        a, b = g32.adjacency.values(), g16.adjacency.values()
        res["bf16_max_abs_err"] = float((a - b).abs().max())
        res["bf16_rel_err_l2"] = float((a - b).norm() / a.norm())
    return res


def _status_gb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS: now; VmHWM: peak since start or the last reset), GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _rss_now_gb() -> float:
    return _status_gb("VmRSS")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=None, help="default <ATLAS_CACHE_DIR>/bench/gpt2-4l-d128")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cone-chunk", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--backward", default="adjoint", choices=["adjoint", "vmap", "replicate"])
    ap.add_argument("--max-feature-nodes", type=int, default=None, help="node budget (default: every feature)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (workers/models/placement.py)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the weights' dtype (ATLAS_DTYPE)")
    ap.add_argument("--clt", dest="clt", action="store_const", const="clt",
                    help="the cross-layer transcoder (clt_dictionaries/, issue #19)")
    ap.add_argument("--clt-resid", dest="clt", action="store_const", const="clt_resid",
                    help="the cross-layer transcoder reading hook_resid_mid (clt_resid_dictionaries/)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bench is None:  # the settings need pydantic, which a bare GPU machine lacks (bench/gpu_check.sh)
        from workers.settings import get_settings

        a.bench = get_settings().cache_dir / "bench" / "gpt2-4l-d128"
    if a.one is not None:
        print(json.dumps(_one(a.bench, a.one, a.batch_size, a.cone_chunk, a.threads, a.repeats, a.bf16, a.backward,
                              a.max_feature_nodes, a.device, a.dtype, a.clt)))
        return
    if not (a.bench / "model").is_dir():
        sys.exit(f"no benchmark model at {a.bench}: run bench/make_bench_model.py first")
    results = []
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for length in a.lengths:
        cmd = [sys.executable, __file__, "--one", str(length), "--bench", str(a.bench), "--batch-size",
               str(a.batch_size), "--cone-chunk", str(a.cone_chunk), "--threads", str(a.threads),
               "--repeats", str(a.repeats), "--backward", a.backward, "--device", a.device, "--dtype", a.dtype] \
            + (["--bf16"] if a.bf16 else []) + ([f"--{a.clt.replace('_', '-')}"] if a.clt else []) \
            + ([] if a.max_feature_nodes is None else ["--max-feature-nodes", str(a.max_feature_nodes)])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        r["load_average_after"] = os.getloadavg()
        print(f"{length:4d} tokens: {r['seconds_per_graph']:.3f} s/graph ({r['cpu_seconds_per_graph']:.3f} CPU s; floor fwd+bwd {r['floor_forward_backward_s']:.4f} s), "
              f"peak RSS {r['peak_rss_gb']:.2f} GB ({r['peak_rss_above_imports_gb']:.2f} above imports, "
              f"{r['peak_rss_above_load_gb']:.2f} above the loaded model), "
              f"{r['n_features']} features, {r['nnz']} edges, load {r['load_average_after'][0]:.2f}"
              + (f", bf16 rel err {r['bf16_rel_err_l2']:.2e}" if 'bf16_rel_err_l2' in r else "")
              + (f"; memory formula {r['predicted_above_load_gb']['total']:.2f} GB above the loaded model (rows held "
                 f"{r['predicted_above_load_gb']['rows_held']:.2f}, read-out operands "
                 f"{r['predicted_above_load_gb']['readout_operands']:.2f}, node table "
                 f"{r['predicted_above_load_gb']['node_table']:.2f}) vs measured {r['peak_rss_above_load_gb']:.2f}"
                 if 'predicted_above_load_gb' in r else "")
              + (f", GPU {r['gpu_name']} peak {r['gpu_peak_above_load_gb']:.2f} GB above the loaded "
                 f"{r['gpu_after_load_gb']:.2f} GB" if 'gpu_name' in r else ""), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
