"""What every case-study task generator produces: a prompt with its answer, a same-type distractor and the
token positions of the prompt's roles (torch-free; the tokenizer is passed in).

A :class:`TaskPrompt` is tokenised with BOS first, so a role's positions index the tokens a worker
attributes (the engine adds BOS the same way). ``roles`` name positions by what they are in the task (IOI:
``IO``, ``S1``, ``S2``, ``END``; induction: the answer's earlier occurrence...); positions in no role are
``other``. Generators refuse (skip, and count) a drawn prompt whose answer is not exactly one token appended
to the prompt's tokens, and say so in their docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Tokenizer(Protocol):
    """What is used of a transformers tokenizer."""

    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class TaskPrompt:
    task: str  # "ioi", "induction", "brackets", "facts"
    text: str  # the prompt without BOS
    input_ids: tuple[int, ...]  # BOS first
    answer_id: int
    distractor_id: int | None  # a wrong answer of the same type (None: the target is the answer's logit)
    roles: dict[str, tuple[int, ...]]  # role -> token positions in input_ids
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def target(self) -> dict:
        """The prompt's target as ``POST /corpora`` takes it (token ids, so the worker re-tokenises nothing)."""
        if self.distractor_id is None:
            return {"logit": self.answer_id}
        return {"diff": [self.answer_id, self.distractor_id]}

    def role_of(self, pos: int) -> str:
        """The role of a position (the first role listing it), else ``other``."""
        for role, positions in self.roles.items():
            if pos in positions:
                return role
        return "other"


def with_bos(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [tokenizer.bos_token_id, *ids] if tokenizer.bos_token_id is not None else ids


def answer_token(tokenizer: Tokenizer, text: str, answer: str) -> int | None:
    """The id of ``answer`` when ``text + answer`` tokenises as ``text``'s tokens plus that one token, else None
    (the answer is several tokens, or merges with the prompt's last token)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    both = tokenizer.encode(text + answer, add_special_tokens=False)
    if len(both) != len(ids) + 1 or both[: len(ids)] != ids:
        return None
    return int(both[-1])


def single_tokens(tokenizer: Tokenizer, words: Sequence[str], prefix: str = " ") -> dict[str, int]:
    """The words that ``tokenizer`` encodes as one token after ``prefix``, with that token's id."""
    out = {}
    for w in words:
        ids = tokenizer.encode(prefix + w, add_special_tokens=False)
        if len(ids) == 1:
            out[w] = int(ids[0])
    return out


def char_spans(tokenizer: Tokenizer, input_ids: Sequence[int], text: str) -> list[tuple[int, int]] | None:
    """(start, end) character span in ``text`` of each token of ``input_ids`` (BOS first: an empty span), or None
    when the tokens' decoded pieces do not concatenate to ``text``."""
    spans, at = [], 0
    for i, t in enumerate(input_ids):
        if i == 0 and t == tokenizer.bos_token_id:
            spans.append((0, 0))
            continue
        piece = tokenizer.decode([t])
        if text[at:at + len(piece)] != piece:
            return None
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans if at == len(text) else None


def corpus_items(prompts: Sequence[TaskPrompt]) -> list[dict]:
    """The prompts as ``POST /corpora`` items."""
    return [{"text": p.text, "targets": [p.target]} for p in prompts]
