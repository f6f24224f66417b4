"""bf16 against fp32 on the zoo: the error of bf16 weights (ATLAS_DTYPE=bf16) in edges, completeness and
logits, on the zoo's gpt2-4l with its transcoders and SAEs and held-out prompts of every task.

    ~/.cache/circuit-atlas/venv/bin/python bench/dtype_error.py [--prompts 24] [--device cpu]

Per prompt: relative L2 and max error (of the largest edge) of the bf16 graph's edges among the nodes both graphs
have, nodes only one graph has (features that cross their threshold), completeness residual of every row
(``|Σ_s A[t, s] − value[t]| / max(1, Σ_s |A[t, s]|)``, worst row) in fp32 and bf16, logits' relative L2 error,
whether the top token agrees, seconds. Prints one line per prompt and the worst / median over prompts.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.device_check import completeness, edge_error  # noqa: E402
from workers.engine.attribution import attribute  # noqa: E402
from workers.engine.linearise import Linearised  # noqa: E402
from workers.models.placement import Placement  # noqa: E402


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.dictionaries.formats import load_dictionary_set
    from workers.zoo.build import ensure_zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    zoo = ensure_zoo()
    model_dir = zoo.models["gpt2-4l"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    dicts = load_dictionary_set(zoo.dictionaries, model)
    lin32 = Linearised(model, dicts).place(Placement(a.device, "fp32"))
    lin16 = Linearised(copy.deepcopy(model), copy.deepcopy(dicts)).place(Placement(a.device, "bf16"))
    rows = [json.loads(line) for line in zoo.heldout.read_text().splitlines() if line.strip()]
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    per_task = max(1, a.prompts // len(by_task))
    chosen = [r for task in sorted(by_task) for r in by_task[task][:per_task]]
    out = []
    for r in chosen:
        t0 = time.perf_counter()
        g32 = attribute(lin32, r["prompt"], tokenizer=tok)
        t1 = time.perf_counter()
        g16 = attribute(lin16, r["prompt"], tokenizer=tok)
        t2 = time.perf_counter()
        rel, mx, only32 = edge_error(g32, g16)
        ids = torch.tensor(tok(r["prompt"])["input_ids"])
        l32 = lin32.trace(ids).logits[-1].float().cpu()
        l16 = lin16.trace(ids).logits[-1].float().cpu()
        res = {"task": r["task"], "tokens": len(g32.tokens), "edges": int(g32.adjacency.values().numel()),
               "edge_rel_l2": rel, "edge_max_err": mx, "nodes_only_fp32": only32,
               "nodes_only_bf16": len(set(g16.node_ids) - set(g32.node_ids)),
               "completeness_fp32": completeness(g32), "completeness_bf16": completeness(g16),
               "logit_rel_l2": float((l32 - l16).norm() / l32.norm()), "top1_agrees": int(l32.argmax()) == int(l16.argmax()),
               "seconds_fp32": t1 - t0, "seconds_bf16": t2 - t1}
        out.append(res)
        print(f"{r['task']:>10} {res['tokens']:3d} tok: edges rel L2 {rel:.2e} max {mx:.2e}, nodes only fp32/bf16 "
              f"{only32}/{res['nodes_only_bf16']} of {g32.n_nodes}, completeness fp32 {res['completeness_fp32']:.1e} "
              f"bf16 {res['completeness_bf16']:.1e}, logits rel L2 {res['logit_rel_l2']:.2e}, top-1 "
              f"{'same' if res['top1_agrees'] else 'DIFFERS'}, {res['seconds_fp32']:.2f} / {res['seconds_bf16']:.2f} s",
              flush=True)
    print(f"{len(out)} prompts on {a.device} (worst / median):")
    for k in ("edge_rel_l2", "edge_max_err", "completeness_fp32", "completeness_bf16", "logit_rel_l2",
              "seconds_fp32", "seconds_bf16"):
        v = [o[k] for o in out]
        print(f"  {k:>18}: {max(v):.3g} / {statistics.median(v):.3g}")
    print(f"  top-1 token agrees on {sum(o['top1_agrees'] for o in out)} of {len(out)}; nodes only in one graph: "
          f"median {statistics.median(o['nodes_only_fp32'] + o['nodes_only_bf16'] for o in out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
