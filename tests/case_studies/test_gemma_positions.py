"""The IO-position check on Gemma 3 270M with the error-only graph (no dictionary spliced in; issue #16):
on generated IOI prompts, the IO name's position carries the largest positive share of logit(IO) − logit(S)
on at least 90% of them, as the zoo's ground-truth test requires of the zoo (tests/engine/test_ground_truth_zoo.py).
``bench/gemma_ioi_positions.py`` measures the same on more prompts."""

from __future__ import annotations

import pytest

from workers.case_studies.ioi import ioi_prompts, single_token_names
from workers.case_studies.positions import IOIPositionSummary, score_ioi

pytestmark = pytest.mark.slow

N_PROMPTS = 40


@pytest.fixture(scope="module")
def scores(gemma):  # noqa: ANN001, ANN201
    from workers.dictionaries.modules import DictionarySet
    from workers.engine.linearise import Linearised

    model, tok = gemma
    lin = Linearised(model, DictionarySet({}))
    return list(score_ioi(lin, tok, ioi_prompts(N_PROMPTS, single_token_names(tok))))


def test_error_only_graph_is_complete_on_every_prompt(scores) -> None:  # noqa: ANN001
    """Shares over positions + the bias leaf = logit(IO) − logit(S)."""
    for s in scores:
        r = s.shares
        assert abs(sum(r.shares.values()) + r.bias - r.value) < 1e-3 * max(1.0, abs(r.value)), s.prompt.text
        assert set(r.shares) == set(range(max(r.shares) + 1))  # every position has a share


def test_io_position_carries_the_largest_share(scores) -> None:  # noqa: ANN001
    summary = IOIPositionSummary.of(scores)
    misses = [(s.prompt.text, s.io_positions, s.shares.best) for s in scores if not s.hit]
    assert summary.hit_rate >= 0.9, f"{summary}; first misses {misses[:3]}"
    # the prompts are IOI in earnest: Gemma itself prefers IO over S on (nearly) all of them
    assert summary.model_accuracy >= 0.9, summary
