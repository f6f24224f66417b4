"""Where a budgeted attribution's memory goes: owned memory (RssAnon) above the loaded model, sampled every 20 ms
through one ``attribute`` call, split by phase and set against the engine README's formula ("Memory under a budget").

    ~/.cache/circuit-atlas/venv/bin/python bench/memory_phases.py [--bench DIR] [--length 256] [--budget 2048]
        [--threads 2]

Phases, in the order they run: the clean trace (``lin.trace``, what the frozen passes hold: residuals, site inputs and
outputs, attention patterns, queries and keys), the targets, then ``build_graph`` (nodes, then bias / edges /
ranking interleaved per expansion batch, then the fold into unexpanded leaves and the CSR: one phase here, its
split in time is the provenance's ``timings_s``). Reports each phase's peak above the loaded model, what the trace
itself holds once it returns (RssAnon, and its tensors' bytes: ``Trace.nbytes``, the formula's "trace" term),
and the formula's terms on the run's counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.engine_speed import _status_gb  # noqa: E402

CACHE = Path.home() / ".cache" / "circuit-atlas"


class Sampler(threading.Thread):
    """RssAnon (GB) every ``every_s`` seconds, with the phase that was current when sampled."""

    def __init__(self, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every_s, self.phase, self.peaks, self.stop = every_s, "load", {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.every_s)

    def sample(self) -> None:
        now = _status_gb("RssAnon")
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), now)

    def enter(self, phase: str) -> None:
        self.sample()  # the previous phase's last value
        self.phase = phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, default=CACHE / "bench" / "gpt2-18l-d640")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine.attribution import AttributionSettings, build_graph
    from workers.engine.linearise import Linearised
    from workers.engine.targets import top_logits

    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.bench / "model", dtype=torch.float32).eval()
    lin = Linearised(model, load_dictionary_set(a.bench / "dictionaries", model))
    prompts = json.loads((a.bench / "prompts.json").read_text())
    ids = torch.tensor(prompts[str(a.length)] if str(a.length) in prompts else prompts["prompts"][str(a.length)])
    loaded = _status_gb("RssAnon")
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    sampler.enter("trace")
    trace = lin.trace(ids, fold_first=True)  # as attribute() does
    trace_held = _status_gb("RssAnon") - loaded
    trace_bytes = trace.nbytes()
    sampler.enter("targets")
    targets = top_logits(lin, trace)
    sampler.enter("build_graph")
    g = build_graph(lin, trace, targets, AttributionSettings(max_feature_nodes=a.budget))
    sampler.enter("done")
    sampler.stop.set()
    sampler.join()
    budget = g.provenance.get("budget") or {}
    formula = {k: v / 1e9 for k, v in budget.get("memory_bytes", {}).items()}
    print(json.dumps({
        "length": a.length, "budget": a.budget, "seconds": time.perf_counter() - t0,
        "rss_anon_after_load_gb": loaded,
        "peak_above_load_gb_by_phase": {k: v - loaded for k, v in sampler.peaks.items() if k != "load"},
        "trace_held_above_load_gb": trace_held, "trace_tensor_gb": trace_bytes / 1e9,
        "timings_s": g.provenance["timings_s"], "nodes": g.n_nodes, "active_features": budget.get("active_features"),
        "formula_gb": formula,
    }, indent=1))


if __name__ == "__main__":
    main()
