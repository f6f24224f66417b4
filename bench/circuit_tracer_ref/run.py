"""Reference timings of circuit-tracer 0.5.0 on the issue #4 benchmark model (bench/README.md).

Run with the circuit-tracer venv (bench/circuit_tracer_ref/setup.sh), never the main venv::

    ~/.cache/circuit-atlas/ct-venv/bin/python bench/circuit_tracer_ref/run.py --out ct.json

For every case LEN:BS (prompt length in tokens, BOS included; circuit-tracer's ``batch_size``) a fresh
subprocess loads the model and transcoders, runs ``attribute`` once to warm up, then times it
``--repeats`` times on the same prompt, and reports seconds per graph, graph size and its peak RSS
(``ru_maxrss`` of that subprocess, so imports and loading are included; the RSS after imports and after
loading are reported separately). A separate subprocess first checks that TransformerLens + circuit-tracer
compute the same function as the Hugging Face model our engine uses (logits and transcoder activations
against ``reference.safetensors`` from bench/make_bench_model.py), and optionally dumps circuit-tracer's
graph of the 16-token prompt to an .npz for comparison with our engine's edges.

JSON goes to stdout (and to ``--out``); progress goes to stderr.

Loading offline: TransformerLens' ``from_pretrained`` accepts only its official model names, and
resolves the config of "gpt2" as a local directory when one of that name exists in the working
directory. So the loader runs in a temporary directory holding a symlink ``gpt2 -> <bench>/model``
and passes the Hugging Face model and tokenizer objects (``hf_model=``, ``tokenizer=``): the weights
go through TransformerLens' own GPT-2 conversion and nothing touches the hub (HF_HUB_OFFLINE=1).
circuit-tracer's ``load_transcoder_from_hub`` only reads hub repos, so its ``load_transcoders`` (what
that function calls after downloading) reads our ``config.yaml`` with the layer paths made absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_CASES = "16:16,64:16,256:16,16:512,64:512"
DEFAULT_BENCH_DIR = Path(os.environ.get("ATLAS_CACHE_DIR", Path.home() / ".cache" / "circuit-atlas")) \
    / "bench" / "gpt2-4l-d128"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_now_mb() -> float:
    """Current resident set size of this process in MB (from /proc, no psutil needed)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


RSS_AT_START_MB = rss_now_mb()  # before torch: the interpreter alone


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux reports KiB


def hwm_mb() -> float:
    """Peak RSS since the last ``reset_hwm()`` (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5), so loading's transient copies do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --------------------------------------------------------------------------------------------------
# worker side: one subprocess per measurement
# --------------------------------------------------------------------------------------------------

def load_replacement_model(bench_dir: Path, clt: str | None = None):
    """circuit-tracer's TransformerLens ReplacementModel of the bench model, loaded offline; with ``clt``
    ("clt" or "clt_resid") the cross-layer transcoder of ``{clt}_ct/`` instead of the transcoder set."""
    import torch
    import yaml
    from circuit_tracer import ReplacementModel
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.utils.hf_utils import load_transcoders
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model_dir = (bench_dir / "model").resolve()
    tc_dir = (bench_dir / (f"{clt}_ct" if clt else "transcoders_ct")).resolve()
    for p in (model_dir / "config.json", tc_dir / "config.yaml"):
        if not p.exists():
            raise SystemExit(f"{p} is missing: build the benchmark model first with the MAIN venv: "
                             "~/.cache/circuit-atlas/venv/bin/python bench/make_bench_model.py")

    config = yaml.safe_load((tc_dir / "config.yaml").read_text())
    config.setdefault("scan", str(tc_dir))
    # Same lazy-loading defaults as ReplacementModel.from_pretrained (encoder in memory, decoder read
    # from the safetensors file on demand), i.e. circuit-tracer as its users run it.
    if clt:  # what load_transcoders calls for a CLT after downloading it from the hub
        transcoders = load_clt(str(tc_dir), feature_input_hook=config["feature_input_hook"],
                               feature_output_hook=config["feature_output_hook"], scan=config["scan"],
                               device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False,
                               lazy_decoder=True)
    else:
        config["transcoders"] = [str(tc_dir / p) for p in config["transcoders"]]
        transcoders = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32,
                                       lazy_encoder=False, lazy_decoder=True)

    hf_model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="ct-gpt2-") as tmp:
        os.symlink(model_dir, Path(tmp) / "gpt2")
        os.chdir(tmp)
        try:
            model = ReplacementModel.from_pretrained_and_transcoders(
                "gpt2", transcoders, backend="transformerlens", device=torch.device("cpu"),
                dtype=torch.float32, hf_model=hf_model, tokenizer=tokenizer)
        finally:
            os.chdir(cwd)
    del hf_model
    return model


def graph_stats(graph, n_layers: int) -> dict:
    import torch

    adj = graph.adjacency_matrix
    n_pos = len(graph.input_tokens)
    return {
        "n_nodes": int(adj.shape[0]),
        "n_features": int(len(graph.selected_features)),
        "n_error_nodes": n_layers * n_pos,
        "n_token_nodes": n_pos,
        "n_logits": len(graph.logit_targets),
        "n_edges_nonzero": int(torch.count_nonzero(adj)),
        "adjacency_mb": adj.numel() * adj.element_size() / 1e6,
    }


def worker_time(bench_dir: Path, length: int, batch_size: int, repeats: int,
                max_feature_nodes: int | None = None, clt: str | None = None) -> dict:
    """Warm-up + ``repeats`` timed ``attribute`` calls on the LEN-token prompt at batch size BS (``repeats``
    0: the first call is the timed one)."""
    import torch
    from circuit_tracer import attribute
    rss_imports = rss_now_mb()

    t0 = time.perf_counter()
    model = load_replacement_model(bench_dir, clt)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_now_mb()
    reset_hwm()

    prompts = json.loads((bench_dir / "prompts.json").read_text())
    if str(length) not in prompts:
        raise SystemExit(f"no {length}-token prompt in {bench_dir / 'prompts.json'} "
                         f"(has {sorted(prompts, key=int)}); rebuild with bench/make_bench_model.py")
    ids = torch.tensor(prompts[str(length)])

    def run():
        return attribute(ids, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=batch_size,
                         max_feature_nodes=max_feature_nodes)

    times, cpu_times = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    graph = run()
    warmup_s = time.perf_counter() - t0
    if repeats == 0:
        times.append(warmup_s)
        cpu_times.append(time.process_time() - c0)
    stats = graph_stats(graph, model.cfg.n_layers)
    del graph
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        graph = run()
        times.append(time.perf_counter() - t0)
        # CPU seconds of this process (all threads): less sensitive than wall time to other
        # processes competing for the cores, and equal to it on an idle machine with --threads 1.
        cpu_times.append(time.process_time() - c0)
        del graph
    peak = rss_peak_mb()
    return {
        "length": length, "batch_size": batch_size, "repeats": repeats,
        "seconds_per_graph_median": sorted(times)[len(times) // 2],
        "seconds_per_graph_min": min(times),
        "cpu_seconds_per_graph_median": sorted(cpu_times)[len(cpu_times) // 2],
        "seconds_all": times, "cpu_seconds_all": cpu_times,
        "warmup_seconds": warmup_s, "load_seconds": load_s,
        "rss_start_mb": RSS_AT_START_MB, "rss_after_imports_mb": rss_imports, "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak, "peak_rss_above_imports_mb": peak - rss_imports,
        "peak_rss_above_load_mb": hwm_mb() - rss_loaded, "max_feature_nodes": max_feature_nodes,
        **stats,
    }


def worker_verify(bench_dir: Path, npz_path: Path | None, clt: str | None = None) -> dict:
    """Check TransformerLens + circuit-tracer against the HF reference; optionally dump a graph."""
    import numpy as np
    import torch
    from circuit_tracer import attribute
    from safetensors.torch import load_file

    model = load_replacement_model(bench_dir, clt)
    ref = load_file(str(bench_dir / "reference.safetensors"))
    prompts = json.loads((bench_dir / "prompts.json").read_text())
    report: dict = {"prompts": {}}
    ok = True
    for n, ids in prompts.items():
        logits, acts = model.get_activations(torch.tensor(ids), sparse=False)  # acts [L, pos, d_tc]
        # the resid_mid CLT has its own reference activations; the mlp_in CLT shares the transcoders' encoders
        ref_logits = ref[f"logits_last/{n}"]
        ref_acts = ref[f"clt_resid_activations/{n}" if clt == "clt_resid" else f"activations/{n}"]
        logit_err = float((logits[0, -1] - ref_logits).abs().max())
        act_err = float((acts - ref_acts).abs().max())
        # Gates must agree exactly except where a pre-activation sits within float noise of zero.
        gate_mismatch = int(((acts > 0) != (ref_acts > 0)).sum())
        entry = {"max_abs_logit_diff": logit_err, "max_abs_activation_diff": act_err,
                 "gate_mismatches": gate_mismatch, "active_features": int((acts > 0).sum())}
        report["prompts"][n] = entry
        ok &= logit_err < 1e-4 and act_err < 1e-4 and gate_mismatch == 0
    report["same_function"] = ok

    if npz_path is not None:
        ids = torch.tensor(prompts["16"])
        g = attribute(ids, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=16,
                      max_feature_nodes=None)
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            npz_path,
            adjacency=g.adjacency_matrix.numpy(),  # [n_nodes, n_nodes], rows = targets, cols = sources
            active_features=g.active_features.numpy(),  # [n_feat, 3] (layer, pos, feature)
            activation_values=g.activation_values.numpy(),  # [n_feat]
            selected_features=g.selected_features.numpy(),
            input_tokens=g.input_tokens.numpy(),
            logit_token_ids=g.logit_token_ids.numpy(),
            logit_probabilities=g.logit_probabilities.numpy(),
            n_layers=np.int64(model.cfg.n_layers),
            node_order=np.array("features (active_features order), errors [layer][pos], "
                                "token embeddings [pos], logits (logit_token_ids order)"),
        )
        report["npz"] = str(npz_path)
        report["npz_graph"] = graph_stats(g, model.cfg.n_layers)
    return report


# --------------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------------

def run_worker(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_cases(text: str) -> list[tuple[int, int]]:
    cases = []
    for part in text.split(","):
        try:
            length, bs = part.split(":")
            cases.append((int(length), int(bs)))
        except ValueError:
            raise SystemExit(f"bad case {part!r} in --cases; expected LEN:BATCH_SIZE, e.g. 16:16") from None
    return cases


def versions() -> dict:
    from importlib.metadata import version
    return {p: version(p) for p in ("circuit-tracer", "transformer-lens", "transformers", "torch", "numpy")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR,
                    help="output of bench/make_bench_model.py (default: %(default)s)")
    ap.add_argument("--cases", default=DEFAULT_CASES,
                    help="comma-separated LEN:BATCH_SIZE pairs (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up "
                    "(default 3; cases of 256+ tokens use --repeats-long)")
    ap.add_argument("--repeats-long", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each worker (default 1: on a shared 2-core machine more threads "
                         "stall on each other; use the same number for our engine)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--dump-npz", type=Path, nargs="?", const=DEFAULT_BENCH_DIR.parent / "ct_graph_16.npz",
                    help="dump circuit-tracer's 16-token graph (default path: %(const)s)")
    ap.add_argument("--skip-verify", action="store_true", help="skip the same-function check")
    ap.add_argument("--max-feature-nodes", type=int, default=None, help="circuit-tracer's node budget")
    ap.add_argument("--clt-resid", dest="clt", action="store_const", const="clt_resid",
                    help="the cross-layer transcoder reading hook_resid_mid (clt_resid_ct/) instead of the "
                    "per-layer transcoders")
    ap.add_argument("--clt", dest="clt", action="store_const", const="clt",
                    help="the cross-layer transcoder (clt_ct/, issue #19) instead "
                    "of the per-layer transcoders")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        import torch
        torch.set_num_threads(args.threads)
        if args.worker == "verify":
            result = worker_verify(args.bench_dir, args.dump_npz, args.clt)
        else:
            length, bs = parse_cases(args.worker)[0]
            repeats = args.repeats_long if length >= 256 else args.repeats
            result = worker_time(args.bench_dir, length, bs, repeats, args.max_feature_nodes, args.clt)
        print(json.dumps(result), flush=True)
        sys.stderr.flush()
        # Skip interpreter teardown: circuit-tracer's ReplacementModel.__del__ raises during it.
        os._exit(0)

    common = ["--bench-dir", str(args.bench_dir), "--threads", str(args.threads), *([f"--{args.clt.replace('_', '-')}"] if args.clt else [])]
    report: dict = {
        "tool": "circuit-tracer", "versions": versions(), "python": platform.python_version(),
        "bench_dir": str(args.bench_dir), "threads": args.threads, "cpu_count": os.cpu_count(), "clt": args.clt,
        "load_average_at_start": list(os.getloadavg()),
        "attribute_kwargs": {"max_n_logits": 10, "desired_logit_prob": 0.95,
                             "max_feature_nodes": args.max_feature_nodes},
        "manifest": json.loads((args.bench_dir / "manifest.json").read_text())
        if (args.bench_dir / "manifest.json").exists() else None,
    }
    if not args.skip_verify:
        log("verifying that circuit-tracer computes the same function as the HF model ...")
        extra = [] if args.dump_npz is None else ["--dump-npz", str(args.dump_npz)]
        report["verify"] = run_worker(["--worker", "verify", *common, *extra], args.threads)
        if not report["verify"]["same_function"]:
            log("WARNING: circuit-tracer's model differs from the HF reference: " + json.dumps(report["verify"]))
    report["cases"] = []
    for length, bs in parse_cases(args.cases):
        log(f"timing {length} tokens at batch_size {bs} ...")
        r = run_worker(["--worker", f"{length}:{bs}", "--repeats", str(args.repeats),
                        "--repeats-long", str(args.repeats_long), *common,
                        *([] if args.max_feature_nodes is None else ["--max-feature-nodes", str(args.max_feature_nodes)])],
                       args.threads)
        log(f"  {r['seconds_per_graph_median']:.3f} s/graph ({r['cpu_seconds_per_graph_median']:.3f} CPU s), "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"{r['n_nodes']} nodes ({r['n_features']} features), {r['n_edges_nonzero']} nonzero edges")
        report["cases"].append(r)
    report["load_average_at_end"] = list(os.getloadavg())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
