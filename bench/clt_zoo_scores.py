"""Replacement and completeness scores (circuit-tracer's definitions, workers/engine/pruning.py) of the zoo's
cross-layer transcoder against its per-layer transcoders (issue #19), on the same held-out prompts.

Both sets carry the zoo's attention SAEs; they differ only in what replaces the MLPs: the per-layer
transcoders (256 features per layer, TopK 16) or the CLT of ``ensure_zoo_clt`` (256 per source layer, TopK 16
per source layer: the same total width and L0). Per prompt: the graph of the top logits (``attribute``
defaults) and ``prune(g).scores`` (replacement and completeness, unpruned and pruned); means over prompts. Run with the main venv::

    ~/.cache/circuit-atlas/venv/bin/python bench/clt_zoo_scores.py [--per-task 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.dictionaries.crosslayer.zoo import ensure_zoo_clt
    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine.attribution import attribute
    from workers.engine.linearise import Linearised
    from workers.engine.pruning import prune
    from workers.zoo.build import ensure_zoo
    from workers.zoo.corpus import read_jsonl

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-task", type=int, default=20, help="held-out prompts per task (default 20)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    zoo = ensure_zoo(progress=False)
    model = AutoModelForCausalLM.from_pretrained(zoo.models["gpt2-4l"], dtype=torch.float32).eval()
    vocab = AutoTokenizer.from_pretrained(zoo.models["gpt2-4l"]).get_vocab()
    sets = {"per-layer transcoders": load_dictionary_set(zoo.dictionaries, model),  # type: ignore[arg-type]
            "cross-layer transcoder": load_dictionary_set(ensure_zoo_clt(zoo), model)}
    examples = read_jsonl(zoo.heldout)
    chosen = [e for task in ("induction", "brackets", "ioi") for e in [x for x in examples if x.task == task][:args.per_task]]
    report: dict = {"prompts": len(chosen), "per_task": args.per_task}
    for name, ds in sets.items():
        lin = Linearised(model, ds)
        rows = []
        for e in chosen:
            g = attribute(lin, torch.tensor([vocab[t] for t in e.prompt_tokens]))
            rows.append({"task": e.task, **prune(g).scores, "features": sum(k == "feat" for k in g.kinds)})
        keys = [k for k in rows[0] if k != "task"]
        report[name] = {k: statistics.fmean(r[k] for r in rows) for k in keys}
        report[name]["by_task"] = {t: {k: statistics.fmean(r[k] for r in rows if r["task"] == t) for k in keys
                                       if "replacement" in k or "completeness" in k}
                                   for t in ("induction", "brackets", "ioi")}
        print(name, json.dumps(report[name]), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
