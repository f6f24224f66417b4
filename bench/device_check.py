"""The engine's identities on a device (bench/gpu_check.sh runs it on CUDA; any device works, cpu included).

On the random GPT-2, Llama and Gemma 3 test models (tests/engine/conftest.py), for several prompts:

1. fp32 on the device: same nodes as on the CPU, edges equal to 1e-4 of the largest, every row complete
   (``Σ_s A[t, s] = value[t]``) to 1e-4;
2. a node budget on the device: every row complete, the expanded features reported against the CPU's;
3. bf16 weights on the device: edges and logits within the bf16 tolerances of fp32 on the CPU, rows complete
   to bf16's tolerance (tests/engine/test_device.py states and tests them on the CPU).

Prints one line per check and exits 1 if any identity fails. Needs torch and transformers only (no services)::

    python bench/device_check.py --device cuda [--prompts 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine.conftest import MAKERS, PROMPTS, calibrate, make_dicts  # noqa: E402
from tests.engine.test_device import COMPLETENESS_TOL, EDGE_TOL, LOGIT_TOL  # noqa: E402
from workers.engine.attribution import AttributionSettings, attribute  # noqa: E402
from workers.engine.graph import Graph  # noqa: E402
from workers.engine.linearise import Linearised  # noqa: E402
from workers.models.placement import Placement  # noqa: E402

FP32_TOL = 1e-4


def completeness(g: Graph) -> float:
    """Largest |Σ_s A[t, s] − value[t]| / max(1, Σ_s |A[t, s]|) over the computed rows."""
    A = g.adjacency.to_dense()
    rows = ~torch.isnan(g.value)
    res = (A.sum(1)[rows] - g.value[rows]).abs()
    return float((res / A.abs().sum(1)[rows].clamp_min(1.0)).max())


def edge_error(a: Graph, b: Graph) -> tuple[float, float, int]:
    """(relative L2, max abs / max |A|) of b's edges against a's on the nodes both have; how many a has not in b."""
    ib = {n: i for i, n in enumerate(b.node_ids)}
    pairs = [(i, ib[n]) for i, n in enumerate(a.node_ids) if n in ib]
    xa, xb = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    A, B = a.adjacency.to_dense()[xa][:, xa], b.adjacency.to_dense()[xb][:, xb]
    scale = float(A.abs().max()) or 1.0
    return float((A - B).norm() / A.norm()), float((A - B).abs().max()) / scale, a.n_nodes - len(pairs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--budget", type=int, default=20)
    a = ap.parse_args()
    dev = Placement(a.device).torch_device()
    print(f"device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""), flush=True)
    failures = 0

    def check(ok: bool, line: str) -> None:
        nonlocal failures
        failures += not ok
        print(("ok   " if ok else "FAIL ") + line, flush=True)

    for name, make in MAKERS.items():
        model = make(3, 64)
        dicts = make_dicts(model, 3, 64)
        cpu = Linearised(model, dicts)
        calibrate(cpu, PROMPTS[0])
        on = Linearised(copy.deepcopy(cpu.model), copy.deepcopy(cpu.dictionaries)).place(Placement(a.device))
        bf = Linearised(copy.deepcopy(cpu.model), copy.deepcopy(cpu.dictionaries)).place(Placement(a.device, "bf16"))
        budget = AttributionSettings(max_feature_nodes=a.budget, expand_batch=8)
        for k, prompt in enumerate(PROMPTS[:a.prompts]):
            ref = attribute(cpu, prompt)
            t0 = time.perf_counter()
            g = attribute(on, prompt)
            secs = time.perf_counter() - t0
            rel, mx, missing = edge_error(ref, g)
            check(g.node_ids == ref.node_ids and mx <= FP32_TOL,
                  f"{name} p{k} fp32 {dev}: same nodes {g.node_ids == ref.node_ids}, edges max err {mx:.2e} of the "
                  f"largest (rel L2 {rel:.2e}), {g.adjacency.values().numel()} edges, {secs:.2f} s")
            c = completeness(g)
            check(c <= FP32_TOL, f"{name} p{k} fp32 {dev}: completeness {c:.2e}")
            gb, rb = attribute(on, prompt, settings=budget), attribute(cpu, prompt, settings=budget)
            c = completeness(gb)
            same = sorted(gb.node_ids) == sorted(rb.node_ids)
            check(c <= FP32_TOL, f"{name} p{k} budget {a.budget} {dev}: completeness {c:.2e}, "
                  f"{gb.provenance['budget']['expanded_features']} expanded, same selection as cpu: {same}")
            g16 = attribute(bf, prompt)
            rel, mx, missing = edge_error(ref, g16)
            la = cpu.trace(prompt).logits
            lb = bf.trace(prompt).logits.float().cpu()
            lrel = float((la - lb).norm() / la.norm())
            c = completeness(g16)
            check(rel <= EDGE_TOL and lrel <= LOGIT_TOL and c <= COMPLETENESS_TOL,
                  f"{name} p{k} bf16 {dev}: edges rel L2 {rel:.2e} (max {mx:.2e} of the largest, {missing} nodes "
                  f"only in fp32), logits rel L2 {lrel:.2e}, completeness {c:.2e}")
    print(f"{failures} failure(s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
