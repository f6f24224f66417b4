"""The IO-position check on IOI prompts (issue #16): does the IO name's position carry the largest positive
share of logit(IO) − logit(S)?

Per prompt, ``workers.engine.evaluation.position_shares`` groups the target's leaf attributions (one ungated
backward pass) by token position; the check passes when the best position other than the last is the IO
name's. With no dictionary spliced in (``DictionarySet({})``) every MLP is an error node and attention is
frozen: the error-only graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from workers.case_studies.ioi import IOIPrompt, Tokenizer, tokenise
from workers.engine.evaluation import PositionShares, example_target, position_shares
from workers.engine.linearise import Linearised


@dataclass
class IOIPositionScore:
    prompt: IOIPrompt
    io_positions: tuple[int, ...]
    s_positions: tuple[int, ...]  # the S name's first and second occurrence
    shares: PositionShares  # shares.value: logit(IO) − logit(S) before Gemma's soft-cap (same sign after)

    @property
    def hit(self) -> bool:
        return self.shares.best in self.io_positions

    @property
    def model_prefers_io(self) -> bool:
        return self.shares.value > 0


def score_ioi(lin: Linearised, tokenizer: Tokenizer, prompts: Iterable[IOIPrompt]) -> Iterator[IOIPositionScore]:
    """One score per prompt, in order (lazily: a caller can show progress)."""
    for prompt in prompts:
        tokens = tokenise(prompt, tokenizer)
        input_ids = torch.tensor(tokens.input_ids)
        target = example_target(lin, input_ids, tokens.io_id, tokens.s_id)
        yield IOIPositionScore(prompt, tokens.io_positions, tokens.s_positions, position_shares(lin, input_ids, target))


@dataclass(frozen=True)
class IOIPositionSummary:
    n: int
    hit_rate: float  # the check's pass rate over all prompts
    model_accuracy: float  # fraction with logit(IO) > logit(S)
    n_model_correct: int
    hit_rate_when_model_correct: float  # the pass rate on the prompts the model gets right (nan if none)

    @classmethod
    def of(cls, scores: list[IOIPositionScore]) -> IOIPositionSummary:
        if not scores:
            raise ValueError("no IOI scores to summarise")
        correct = [s for s in scores if s.model_prefers_io]
        return cls(n=len(scores), hit_rate=sum(s.hit for s in scores) / len(scores),
                   model_accuracy=len(correct) / len(scores), n_model_correct=len(correct),
                   hit_rate_when_model_correct=sum(s.hit for s in correct) / len(correct) if correct else float("nan"))
