"""Ground truth on the zoo (workers/zoo): on held-out induction, bracket and IOI examples, the answer's
source position carries the largest positive share of the target's leaf attributions (IOI: IO − S)
among positions other than the last, on at least 90% of examples per task; with the zoo's per-layer
transcoders and again with its cross-layer transcoder (``ensure_zoo_clt``: the zoo's attention SAEs + a CLT,
trained from the cached zoo on first use).

Uses the zoo of the current sources. ``scripts/dev test`` builds it (``atlas zoo build``) before pytest
starts, so here ``ensure_zoo()`` returns at once; run alone on a cold cache, the fixture builds it.
"""

from __future__ import annotations

import pytest
import torch

from workers.engine.evaluation import example_target, position_shares

pytestmark = pytest.mark.slow

N_PER_TASK = 100


@pytest.fixture(scope="module", params=["transcoders", "clt"])
def zoo_engine(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine.linearise import Linearised
    from workers.zoo.build import ensure_zoo
    from workers.zoo.corpus import read_jsonl

    torch.set_num_threads(1)
    zoo = ensure_zoo(progress=False)
    assert zoo.dictionaries is not None, "the zoo was built without dictionaries (dictionary training unavailable)"
    model = AutoModelForCausalLM.from_pretrained(zoo.models["gpt2-4l"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(zoo.models["gpt2-4l"])
    if request.param == "clt":
        from workers.dictionaries.crosslayer.zoo import ensure_zoo_clt

        lin = Linearised(model, load_dictionary_set(ensure_zoo_clt(zoo), model))
    else:
        lin = Linearised(model, load_dictionary_set(zoo.dictionaries, model))
    return lin, tok.get_vocab(), read_jsonl(zoo.heldout)


@pytest.fixture(scope="module")
def shares_by_task(zoo_engine):
    """Per task: [(example, PositionShares)] for the first N_PER_TASK held-out examples whose answer source
    is not the last position (the rule looks at positions other than the last, so those examples cannot
    be scored)."""
    lin, vocab, examples = zoo_engine
    out = {}
    for task in ("induction", "brackets", "ioi"):
        last = lambda e: len(e.prompt_tokens) - 1  # noqa: E731
        chosen = [e for e in examples if e.task == task and any(p != last(e) for p in e.source_positions)]
        chosen = chosen[:N_PER_TASK]
        rows = []
        for e in chosen:
            ids_ = torch.tensor([vocab[t] for t in e.prompt_tokens])
            s_id = vocab[e.s_name] if task == "ioi" and e.s_name else None
            tgt = example_target(lin, ids_, vocab[e.answer], s_id)
            rows.append((e, position_shares(lin, ids_, tgt)))
        out[task] = rows
    return out


@pytest.mark.parametrize("task", ["induction", "brackets", "ioi"])
def test_position_shares_sum_to_the_target(shares_by_task, task):
    """Completeness of the grouping itself: shares over positions + the bias leaf = the target's value."""
    rows = shares_by_task[task]
    assert len(rows) >= 20, f"only {len(rows)} held-out {task} examples"
    for e, res in rows:
        assert abs(sum(res.shares.values()) + res.bias - res.value) < 1e-3 * max(1.0, abs(res.value)), e.prompt


@pytest.mark.parametrize("task", ["induction", "brackets", "ioi"])
def test_answer_source_position_carries_the_largest_share(shares_by_task, task):
    rows = shares_by_task[task]
    hits = [res.best in e.source_positions for e, res in rows]
    misses = [(e.prompt, e.source_positions, res.best) for (e, res), hit in zip(rows, hits, strict=True) if not hit]
    rate = sum(hits) / len(rows)
    assert rate >= 0.9, f"{task}: {rate:.0%} hits; first misses {misses[:3]}"
