"""The synthetic corpus: determinism, ground-truth source positions, disjoint splits."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from workers.zoo import vocab as V
from workers.zoo.corpus import (
    MAX_BRACKET_DEPTH,
    TASKS,
    CorpusSpec,
    Example,
    bracket_example,
    example_stream,
    heldout_examples,
    induction_example,
    ioi_example,
    read_jsonl,
    train_examples,
    write_jsonl,
)

SMALL = CorpusSpec(n_train=3000, n_heldout_per_task=150)


def _take(seed: int, n: int) -> list[Example]:
    stream = example_stream(seed, CorpusSpec().mix)
    return [next(stream) for _ in range(n)]


def test_same_seed_same_corpus_and_different_seed_differs() -> None:
    assert _take(7, 300) == _take(7, 300)
    assert _take(7, 300) != _take(8, 300)


def test_every_task_appears_in_the_training_mix() -> None:
    tasks = {ex.task for ex in train_examples(SMALL)}
    assert tasks == set(TASKS)


def test_prompt_text_and_tokens_agree() -> None:
    for ex in _take(3, 500):
        assert ex.prompt_tokens[0] == V.BOS
        assert ex.prompt.split(" ") == list(ex.prompt_tokens[1:])
        assert all(0 < p < len(ex.prompt_tokens) for p in ex.source_positions)


def _bracket_stack_top(tokens: tuple[str, ...]) -> int:
    """Independent check: index of the innermost unmatched open bracket, by a left-to-right scan."""
    stack: list[int] = []
    for i, t in enumerate(tokens):
        if t in V.OPEN_BRACKETS:
            stack.append(i)
        elif t in V.CLOSE_BRACKETS:
            opened = tokens[stack.pop()]
            assert V.CLOSER[opened] == t, "prompt itself must be well nested"
    return stack[-1]


def test_brackets_source_is_the_matching_open_bracket() -> None:
    rng = random.Random(11)
    for _ in range(400):
        ex = bracket_example(rng)
        (src,) = ex.source_positions
        assert src == _bracket_stack_top(ex.prompt_tokens)
        assert V.CLOSER[ex.prompt_tokens[src]] == ex.answer
        # The whole training text is a balanced string.
        full = [*ex.prompt_tokens[1:], ex.answer, *ex.completion]
        depth = 0
        for t in full:
            depth += 1 if t in V.OPEN_BRACKETS else -1
            assert 0 <= depth <= MAX_BRACKET_DEPTH
        assert depth == 0


def test_induction_source_follows_the_earlier_occurrence_of_the_last_token() -> None:
    rng = random.Random(12)
    symbols = V.induction_symbols()
    for _ in range(400):
        ex = induction_example(rng, symbols)
        (src,) = ex.source_positions
        toks = ex.prompt_tokens
        last = toks[-1]
        earlier = [i for i, t in enumerate(toks[:-1]) if t == last]
        assert earlier == [src - 1], "A must occur exactly once before the final A, right before B"
        assert toks[src] == ex.answer
        assert all(t in symbols for t in toks[1:])


def test_ioi_source_is_the_indirect_object_and_s_is_repeated() -> None:
    rng = random.Random(13)
    orders = set()
    templates = set()
    for _ in range(600):
        ex = ioi_example(rng)
        toks = ex.prompt_tokens
        names = [t for t in toks if t in V.NAMES]
        assert ex.s_name is not None and ex.s_name != ex.answer
        assert names.count(ex.s_name) == 2 and names.count(ex.answer) == 1
        assert [toks[p] for p in ex.source_positions] == [ex.answer]
        assert ex.source_positions == tuple(i for i, t in enumerate(toks) if t == ex.answer)
        first_io = toks.index(ex.answer)
        first_s = toks.index(ex.s_name)
        order = "ABBA" if first_io < first_s else "BABA"
        assert ex.template.endswith(order)
        orders.add(order)
        templates.add(ex.template.split("-")[0])
    assert orders == {"ABBA", "BABA"}
    assert len(templates) >= 8


def test_heldout_prompts_never_occur_in_training_and_cover_each_task() -> None:
    train = train_examples(SMALL)
    held = heldout_examples(SMALL, train)
    train_prompts = {ex.prompt for ex in train}
    assert not any(ex.prompt in train_prompts for ex in held)
    assert len({ex.prompt for ex in held}) == len(held)
    for task in TASKS:
        assert sum(ex.task == task for ex in held) == SMALL.n_heldout_per_task


def test_heldout_seed_must_differ() -> None:
    with pytest.raises(ValueError, match="heldout_seed"):
        heldout_examples(replace(SMALL, heldout_seed=SMALL.train_seed), [])


def test_jsonl_round_trip(tmp_path) -> None:
    examples = _take(5, 200)
    write_jsonl(examples, tmp_path / "x.jsonl")
    assert read_jsonl(tmp_path / "x.jsonl") == examples
