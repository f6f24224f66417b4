"""The node budget's memory formula before a run (workers/engine/README.md "Memory under a budget"): trace the
prompt and lay out its nodes (no edges), then evaluate ``budget.memory_terms`` with the rows-held bound
``(B + T) · N`` (every computed row holding every source; a real row holds only its causal part, so this is an
upper bound on that term). ``engine_speed.py`` prints the same formula on a finished run's exact counts.

    ~/.cache/circuit-atlas/venv/bin/python bench/budget_memory.py --bench ~/.cache/circuit-atlas/bench/gpt2-18l-d640 \\
        --lengths 64 256 1024 --budgets 2048 8192
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.attribution import AttributionSettings  # noqa: E402
from workers.engine.budget import memory_terms  # noqa: E402
from workers.engine.linearise import Linearised  # noqa: E402
from workers.engine.nodes import lay_out  # noqa: E402
from workers.engine.targets import top_logits  # noqa: E402


def main() -> int:
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(a.bench / "model", dtype=torch.float32).eval()
    lin = Linearised(model, load_dictionary_set(a.bench / "dictionaries", model))
    prompts = json.loads((a.bench / "prompts.json").read_text())
    for length in a.lengths:
        trace = lin.trace(torch.tensor(prompts[str(length)]), fold_first=True)
        targets = top_logits(lin, trace)
        for budget in a.budgets:
            settings = AttributionSettings(batch_size=a.batch_size, max_feature_nodes=budget)
            layout = lay_out(lin, trace, targets, settings)
            n = len(layout.nodes.ids)
            held = isinstance(layout.site_cols[0].vectors, torch.Tensor)
            terms = memory_terms(n, (budget + len(targets)) * n, [tuple(sc.vectors.shape) for sc in layout.site_cols],
                                 held, trace.n_pos, lin.n_layers, lin.n_heads, lin.d_model, len(layout.site_cols),
                                 a.batch_size, trace.nbytes())
            active = sum(k == "feat" for k in layout.nodes.kinds)
            print(f"{length:5d} tokens, budget {budget}: {active:,} active features, {n:,} nodes; formula ≤ "
                  f"{terms['total'] / 1e9:.2f} GB above the loaded model (" + ", ".join(
                      f"{k} {v / 1e9:.2f}" for k, v in terms.items() if k != "total")
                  + f"; operands {'held' if held else 'built per batch'})", flush=True)
            del layout
    return 0


if __name__ == "__main__":
    sys.exit(main())
