"""Issue #16: the IO-position check on Gemma 3 270M with the error-only graph (no dictionary spliced in), or with
the suite's trained slice of dictionaries spliced in (``--dictionaries slice``).

For each generated IOI prompt (workers/case_studies/ioi.py: names that are one Gemma token, 9 templates, ABBA and
BABA alternating), target logit(IO) − logit(S); the check passes when the IO name's position carries the largest
positive share of the target among positions other than the last (workers/engine/evaluation.py, as in the zoo's
ground-truth test). Prints the pass rate, Gemma's own accuracy (IO − S > 0), the pass rate on the prompts Gemma
gets right, per template, and where the misses put their largest share.

    ~/.cache/circuit-atlas/venv/bin/python bench/gemma_ioi_positions.py [--n 200] [--seed 0] [--threads 1]
        [--dictionaries none|slice] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write every prompt's result here")
    ap.add_argument("--dictionaries", choices=("none", "slice"), default="none",
                    help="none: the error-only graph; slice: the suite's trained slice spliced in "
                         "(workers/dictionaries/gemma/slice.py; trained first if not cached)")
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from workers.case_studies.ioi import ioi_prompts, single_token_names
    from workers.case_studies.positions import IOIPositionSummary, score_ioi
    from workers.dictionaries.modules import DictionarySet
    from workers.engine.linearise import Linearised
    from workers.models.gguf import load_gemma3_270m

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tok = load_gemma3_270m()
    loaded = time.perf_counter()
    names = single_token_names(tok)
    prompts = ioi_prompts(args.n, names, seed=args.seed)
    if args.dictionaries == "slice":
        from workers.dictionaries.formats import load_dictionary_set
        from workers.dictionaries.gemma.slice import ensure_gemma_slice

        dictionaries = load_dictionary_set(ensure_gemma_slice(model=model, tokenizer=tok), model)
    else:
        dictionaries = DictionarySet({})
    lin = Linearised(model, dictionaries)
    scores = list(tqdm(score_ioi(lin, tok, prompts), total=len(prompts), desc="prompts", file=sys.stderr))
    done = time.perf_counter()

    summary = IOIPositionSummary.of(scores)
    graph = "error-only graph" if args.dictionaries == "none" else f"slice spliced in ({len(dictionaries)} dictionaries)"
    print(f"Gemma 3 270M, {graph}, {summary.n} IOI prompts (seed {args.seed}), {len(names)} single-token "
          f"names; load {loaded - started:.0f} s, {(done - loaded) / summary.n:.2f} s per prompt "
          f"({args.threads} thread{'s' * (args.threads > 1)})")
    print(f"  IO position carries the largest positive share: {summary.hit_rate:.1%}")
    print(f"  Gemma prefers IO over S (IO − S > 0):             {summary.model_accuracy:.1%} "
          f"({summary.n_model_correct}/{summary.n})")
    print(f"  check on the prompts Gemma gets right:            {summary.hit_rate_when_model_correct:.1%}")
    by_template: dict[str, list[bool]] = defaultdict(list)
    for s in scores:
        by_template[s.prompt.template].append(s.hit)
    print("  per template: " + ", ".join(f"{t} {sum(h)}/{len(h)}" for t, h in sorted(by_template.items())))
    misses = [s for s in scores if not s.hit]
    where = Counter(_role(s) for s in misses)
    print(f"  misses: {len(misses)}; largest share at: {dict(where)}")
    for s in misses[:10]:
        print(f"    {s.prompt.text!r} IO={s.prompt.io} S={s.prompt.s} IO−S={s.shares.value:.2f} best={s.shares.best} "
              f"shares={ {p: round(v, 2) for p, v in sorted(s.shares.shares.items())} }")
    if args.json:
        args.json.write_text(json.dumps([{"prompt": s.prompt.text, "io": s.prompt.io, "s": s.prompt.s,
                                          "template": s.prompt.template, "io_positions": s.io_positions,
                                          "best": s.shares.best, "value": s.shares.value, "hit": s.hit,
                                          "shares": s.shares.shares} for s in scores], indent=1))


def _role(score) -> str:  # noqa: ANN001
    """What the position with the largest share holds: BOS, the S name (first or second), or another token."""
    best = score.shares.best
    roles = {0: "BOS", -1: "no positive share", score.s_positions[0]: "S1", score.s_positions[1]: "S2"}
    return roles.get(best, "other")


if __name__ == "__main__":
    main()
