"""Wide dictionaries, loaded eagerly or lazily (``load_dictionary_set(lazy=True)``: memory-mapped matrices): resident
memory by kind above the loaded model while loading them and running one attribution under a node budget.

Build the sets first (outside the checkout; the 16,384-feature set is the Gemma-shaped benchmark's own)::

    python bench/make_bench_model.py --shape gpt2-18l-d640                                   # 16,384 features
    python bench/make_bench_model.py --shape gpt2-18l-d640 --d-tc 65536 --dictionaries-only # 65,536 features

then::

    ~/.cache/circuit-atlas/venv/bin/python bench/lazy_memory.py [--sets DIR ...] [--length 64] [--budget 2048]
        [--modes eager lazy] [--eager-limit-gb 4]

Each (set, mode) runs in a fresh subprocess. Memory is read from ``/proc/self/status`` (workers/dictionaries/formats/
lazy.py ``rss_kinds``): ``RssAnon`` is the process's own memory (what it holds), ``RssFile`` mapped file pages
(page cache: clean, shared, reclaimable). Peaks are sampled every 2 ms by a thread during the attribution
(``build_graph``: trace, node table, budgeted rows); all figures are above the loaded model. The dictionary files
are first evicted from the page cache (``--warm``: not), since the kernel maps up to 16 already-cached neighbouring
pages into the process on each fault ("fault-around"), which would count unread rows in RssFile. Then the provenance's
dictionary hash (which reads every file once, one tensor's copy at a time) is measured on its own. An eager run whose
dictionaries would exceed ``--eager-limit-gb`` is not started (its size is printed instead: this machine is shared).
The graphs of the two modes must be equal (a hash over the CSR); the script says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Peaks:
    """Sample ``rss_kinds()`` every ``interval`` s in a thread; the peaks of each kind."""

    def __init__(self, interval: float = 0.002) -> None:
        from workers.dictionaries.formats.lazy import rss_kinds

        self.rss_kinds, self.interval = rss_kinds, interval
        self.peak = rss_kinds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.rss_kinds()
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.interval)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = self.rss_kinds()
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)


def drop_page_cache(files: list[Path]) -> None:
    """Evict these files' clean pages from the page cache (``POSIX_FADV_DONTNEED``), so that a lazy run's RssFile
    counts what it reads: the kernel maps up to 16 neighbouring pages per fault when they are already cached."""
    import os

    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _one(set_dir: Path, mode: str, length: int, budget: int, cold: bool = True) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set
    from workers.dictionaries.formats.lazy import resident_bytes, rss_kinds
    from workers.engine.attribution import AttributionSettings, build_graph
    from workers.engine.linearise import Linearised
    from workers.engine.targets import top_logits

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(set_dir / "model", dtype=torch.float32).eval()
    ids = torch.tensor(json.loads((set_dir / "prompts.json").read_text())[str(length)])
    base = rss_kinds()

    def above(m: dict) -> dict:
        return {k: (m[k] - base[k]) / 1e9 for k in ("anon", "file")}

    if cold:
        drop_page_cache(sorted((set_dir / "dictionaries").glob("*.safetensors")))
    t0 = time.perf_counter()
    with Peaks() as load_peak:
        ds = load_dictionary_set(set_dir / "dictionaries", model, lazy=mode == "lazy")
    t_load = time.perf_counter() - t0
    loaded = rss_kinds()
    lin = Linearised(model, ds)
    t0 = time.perf_counter()
    with Peaks() as run_peak:
        trace = lin.trace(ids, fold_first=True)
        g = build_graph(lin, trace, top_logits(lin, trace), AttributionSettings(max_feature_nodes=budget))
    t_run = time.perf_counter() - t0
    after_run = rss_kinds()
    # lazy: decoder / encoder pages of the mappings resident in this process after the run (all layers)
    dec_resident = sum(resident_bytes(d.W_dec) for _, d in ds) / 1e9
    enc_resident = sum(resident_bytes(d.W_enc) for _, d in ds) / 1e9
    adj = g.adjacency
    h = hashlib.sha256()
    for t in (adj.crow_indices(), adj.col_indices(), adj.values()):
        h.update(t.numpy().tobytes())
    h.update("\n".join(g.node_ids).encode())
    t0 = time.perf_counter()
    with Peaks() as hash_peak:
        lin.dictionary_hash()
    t_hash = time.perf_counter() - t0
    d0 = next(iter(ds))[1]
    return {
        "set": set_dir.name, "mode": mode, "length": length, "budget": budget, "n_dicts": len(ds),
        "d_dict": d0.cfg.d_dict, "d_model": d0.cfg.d_out,
        "matrix_gb": sum(4 * d.W_dec.numel() for _, d in ds) / 1e9,  # one kind (W_enc or W_dec), all layers
        "layer_decoder_gb": 4 * d0.W_dec.numel() / 1e9,
        "active_features": g.provenance["budget"]["active_features"], "nodes": g.n_nodes,
        "edges": int(adj.values().numel()), "graph_sha": h.hexdigest()[:16],
        "formula_gb": g.provenance["budget"].get("memory_bytes", {}).get("total", float("nan")) / 1e9,
        "load_s": t_load, "run_s": t_run, "hash_s": t_hash,
        "loaded": above(loaded), "load_peak": above(load_peak.peak), "run_peak": above(run_peak.peak),
        "after_run": above(after_run), "hash_peak": above(hash_peak.peak),
        "decoder_resident_gb": dec_resident, "encoder_resident_gb": enc_resident,
    }


def main() -> int:
    from workers.settings import get_settings

    bench = get_settings().cache_dir / "bench"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", type=Path, nargs="+",
                    default=[bench / "gpt2-18l-d640", bench / "gpt2-18l-d640-tc65536"])
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--modes", nargs="+", choices=["eager", "lazy"], default=["eager", "lazy"])
    ap.add_argument("--eager-limit-gb", type=float, default=4.0,
                    help="do not run eager loads whose matrices exceed this (they are held in anonymous memory)")
    ap.add_argument("--warm", action="store_true",
                    help="leave the dictionary files in the page cache (default: evict them first, see drop_page_cache)")
    ap.add_argument("--one", nargs=2, metavar=("SET", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(_one(Path(a.one[0]), a.one[1], a.length, a.budget, cold=not a.warm)), flush=True)
        return 0
    results = []
    for s in a.sets:
        index = json.loads((s / "dictionaries" / "dictionaries.json").read_text())
        sizes = [(s / "dictionaries" / e["weights"]).stat().st_size for e in index["entries"]]
        for mode in a.modes:
            if mode == "eager" and sum(sizes) / 1e9 > a.eager_limit_gb:
                print(f"{s.name} eager: not run, its matrices would hold {sum(sizes) / 1e9:.2f} GB of anonymous memory "
                      f"(> --eager-limit-gb {a.eager_limit_gb})", flush=True)
                continue
            out = subprocess.run([sys.executable, __file__, "--one", str(s), mode, "--length", str(a.length),
                                  "--budget", str(a.budget), *(["--warm"] if a.warm else [])],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                print(f"{s.name} {mode}: failed (rc {out.returncode})\n{out.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(line[0][len("RESULT "):])
            results.append(r)
            print(f"{r['set']} ({r['n_dicts']} × {r['d_dict']:,} features; one matrix kind {r['matrix_gb']:.2f} GB, "
                  f"one layer's decoder {r['layer_decoder_gb'] * 1e3:.0f} MB) {mode}: {r['length']} tokens, budget "
                  f"{r['budget']}, {r['active_features']:,} active features, {r['edges']:,} edges, graph {r['graph_sha']}",
                  flush=True)
            for k in ("loaded", "load_peak", "run_peak", "after_run", "hash_peak"):
                print(f"    {k:10s} RssAnon {r[k]['anon']:+6.2f} GB   RssFile {r[k]['file']:+6.2f} GB", flush=True)
            if mode == "lazy":
                print(f"    mapped pages resident after the run: decoders {r['decoder_resident_gb']:.3f} GB of "
                      f"{r['matrix_gb']:.2f}, encoders {r['encoder_resident_gb']:.3f} GB of {r['matrix_gb']:.2f}", flush=True)
            print(f"    load {r['load_s']:.1f} s, trace + graph {r['run_s']:.1f} s, dictionary hash {r['hash_s']:.1f} s; "
                  f"budget formula (engine README) {r['formula_gb']:.2f} GB", flush=True)
    by_set: dict[str, dict[str, str]] = {}
    for r in results:
        by_set.setdefault(r["set"], {})[r["mode"]] = r["graph_sha"]
    for name, shas in by_set.items():
        if len(shas) == 2:
            print(f"{name}: eager and lazy graphs {'EQUAL' if len(set(shas.values())) == 1 else 'DIFFER'}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
