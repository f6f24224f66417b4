"""Issue #15's benchmark: this engine and circuit-tracer 0.5.0 with the same node budget, alternating, on the
Gemma-3-270M-shaped model (bench/make_bench_model.py --shape gpt2-18l-d640).

    ~/.cache/circuit-atlas/venv/bin/python bench/budget_compare.py --cases 64:2048,64:8192 [--threads 2]
        [--bench DIR] [--ct-batch-size 64] [--timeout 1800] [--only ours|ct]
        [--max-rss-gb 19]

Per case LEN:BUDGET (prompt tokens incl. BOS : ``max_feature_nodes``), ours (bench/engine_speed.py, main
venv) then circuit-tracer (bench/circuit_tracer_ref/run.py, its own venv), each in a fresh subprocess,
one timed run each (no warm-up: these runs take minutes). Reports wall and CPU seconds, peak RSS and peak
RSS above the loaded model (RSS after loading model and dictionaries / transcoders), and the load average.
A run that exceeds ``--timeout``, owns more than ``--max-rss-gb`` (RssAnon of its whole process group,
sampled twice a second) or dies is reported as not completed, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ATLAS_CACHE_DIR", Path.home() / ".cache" / "circuit-atlas"))


def _group_anon_gb(pgid: int) -> float:
    """Memory owned (RssAnon: not file pages, which the kernel can drop) by every process in process group
    ``pgid`` (the run and its grandchildren), in GB."""
    total_kb = 0
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc_dir.name)) != pgid:
                continue
            status = (proc_dir / "status").read_text()
            total_kb += int(status.split("RssAnon:", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read, or is a kernel thread
    return total_kb / 1e6


def _run(cmd: list[str], timeout: float, threads: int, max_rss_gb: float) -> tuple[dict | None, str]:
    """Run ``cmd`` in its own process group, stopping it past ``timeout`` seconds or once the group's owned
    memory exceeds ``max_rss_gb`` (so that a run too big for the machine is reported, not left to the kernel's
    OOM killer, which may pick another process)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=env, start_new_session=True)
        t0, why = time.monotonic(), ""
        while proc.poll() is None:
            rss = _group_anon_gb(proc.pid)
            if rss > max_rss_gb:
                why = f"stopped holding {rss:.1f} GB, over the cap of {max_rss_gb:.1f} GB, after " \
                      f"{time.monotonic() - t0:.0f} s"
            elif time.monotonic() - t0 > timeout:
                why = f"did not finish within {timeout:.0f} s"
            if why:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None, why
            time.sleep(0.5)
        out_f.seek(0)
        err_f.seek(0)
        out, err_text = out_f.read(), err_f.read()
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err_text)
    if p.returncode != 0:
        return None, f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"
    lines = p.stdout.splitlines()  # the JSON is the last thing printed, starting at column 0
    first = next((i for i, line in enumerate(lines) if line[:1] in ("[", "{")), None)
    try:
        data = json.loads("\n".join(lines[first:])) if first is not None else None
    except json.JSONDecodeError:
        data = None
    if data is None:
        return None, "unparsable output: " + p.stdout[-300:]
    return data, ""


def ours(bench: Path, length: int, budget: int, threads: int, timeout: float, max_rss_gb: float) -> dict:
    cmd = [sys.executable, str(HERE / "engine_speed.py"), "--bench", str(bench), "--lengths", str(length),
           "--repeats", "0", "--threads", str(threads), "--max-feature-nodes", str(budget)]
    data, err = _run(cmd, timeout, threads, max_rss_gb)
    if data is None:
        return {"completed": False, "why": err}
    r = data[0]
    return {"completed": True, "wall_s": r["seconds_per_graph"], "cpu_s": r["cpu_seconds_per_graph"],
            "peak_rss_gb": r["peak_rss_gb"], "above_load_gb": r["peak_rss_above_load_gb"],
            "nodes": r["n_nodes"], "edges": r["nnz"], "budget": r["budget"], "timings_s": r["timings_s"]}


def circuit_tracer(bench: Path, length: int, budget: int, threads: int, timeout: float, max_rss_gb: float,
                   batch_size: int, venv: Path) -> dict:
    cmd = [str(venv / "bin" / "python"), str(HERE / "circuit_tracer_ref" / "run.py"), "--bench-dir", str(bench),
           "--cases", f"{length}:{batch_size}", "--repeats", "0", "--repeats-long", "0", "--skip-verify",
           "--threads", str(threads), "--max-feature-nodes", str(budget)]
    data, err = _run(cmd, timeout, threads, max_rss_gb)
    if data is None:
        return {"completed": False, "why": err}
    r = data["cases"][0]
    return {"completed": True, "wall_s": r["seconds_per_graph_median"], "cpu_s": r["cpu_seconds_per_graph_median"],
            "peak_rss_gb": r["peak_rss_mb"] / 1e3, "above_load_gb": r["peak_rss_above_load_mb"] / 1e3,
            "nodes": r["n_nodes"], "features": r["n_features"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, default=CACHE / "bench" / "gpt2-18l-d640")
    ap.add_argument("--cases", default="64:2048,64:8192,256:2048,256:8192,1024:2048,1024:8192")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ct-batch-size", type=int, default=64)
    ap.add_argument("--ct-venv", type=Path, default=Path(os.environ.get("ATLAS_CT_VENV", CACHE / "ct-venv")))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--only", choices=["ours", "ct"])
    ap.add_argument("--max-rss-gb", type=float, default=19.0,
                    help="stop a run whose processes own more memory (RssAnon) than this (the machine has 24 GB)")
    a = ap.parse_args()
    if not (a.bench / "model").is_dir():
        sys.exit(f"no benchmark model at {a.bench}: bench/make_bench_model.py --shape gpt2-18l-d640")
    results = []
    for case in a.cases.split(","):
        length, budget = (int(x) for x in case.split(":"))
        row: dict = {"length": length, "budget": budget}
        for name in ("ours", "ct"):
            if a.only and a.only != name:
                continue
            load0 = os.getloadavg()[0]
            t0 = time.time()
            r = (ours(a.bench, length, budget, a.threads, a.timeout, a.max_rss_gb) if name == "ours" else
                 circuit_tracer(a.bench, length, budget, a.threads, a.timeout, a.max_rss_gb, a.ct_batch_size,
                                a.ct_venv))
            r["load_before"], r["load_after"], r["started"] = load0, os.getloadavg()[0], time.strftime(
                "%H:%M:%S", time.gmtime(t0))
            row[name] = r
            if r["completed"]:
                print(f"{length:5d} tok, budget {budget:5d}, {name:4s}: {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} CPU s, "
                      f"peak RSS {r['peak_rss_gb']:.2f} GB ({r['above_load_gb']:.2f} above the loaded model), "
                      f"load {load0:.1f}->{r['load_after']:.1f}", flush=True)
            else:
                print(f"{length:5d} tok, budget {budget:5d}, {name:4s}: NOT COMPLETED ({r['why']})", flush=True)
        results.append(row)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
