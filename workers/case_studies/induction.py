"""Induction prompts: a random sequence of real words, then its start again; the next token is the word that
followed in the first occurrence.

" river apple king window song ... river apple king" → " window". Words are drawn (without repetition within
a prompt) from the zoo's English lexicon (workers/zoo/vocab.py) and kept only if Gemma's tokenizer makes them one
token after a space, so every word is one token and a repeat is the same token. The target is the answer's
logit (``distractor_id`` None). Deterministic by seed. Refusal rule: none is needed (every word is one token and
the pieces cannot merge across the space), but :func:`induction_prompts` checks it and raises if one would.

Roles: ``answer_first`` (the answer's earlier occurrence: where an induction head copies from), ``current_first``
(the earlier occurrence of the last token, whose successor the answer is), ``END``, ``span1`` (the rest of the first
span), ``span2`` (the rest of the repeat).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from workers.case_studies.tasks import TaskPrompt, Tokenizer, answer_token, single_tokens, with_bos
from workers.zoo import vocab

WORDS: tuple[str, ...] = (
    *vocab.NOUNS, *vocab.ADJECTIVES, *vocab.TRANSITIVE_VERBS, *vocab.INTRANSITIVE_VERBS, *vocab.PLACES,
    *vocab.OBJECTS, *vocab.ADVERBS,
)
SPAN = 10  # words in the first occurrence


def induction_prompts(n: int, tokenizer: Tokenizer, seed: int = 0, span: int = SPAN,
                      words: Sequence[str] = WORDS) -> list[TaskPrompt]:
    """``n`` prompts: ``span`` distinct single-token words, then the first ``k`` of them again (k drawn from
    2 .. span − 1); the answer is word k + 1."""
    vocab_ids = single_tokens(tokenizer, sorted(set(words)))
    pool = sorted(vocab_ids)
    if len(pool) < span:
        raise ValueError(f"only {len(pool)} single-token words; a span needs {span}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = rng.sample(pool, span)
        k = rng.randrange(2, span)
        text = " " + " ".join(seq) + " " + " ".join(seq[:k])
        answer = answer_token(tokenizer, text, " " + seq[k])
        ids = with_bos(tokenizer, text)
        if answer is None or len(ids) != 1 + span + k:
            raise ValueError(f"{text!r}: a word is not one token in place")
        first = 1  # BOS at 0, the first span at 1 .. span
        roles = {"END": (len(ids) - 1,), "answer_first": (first + k,), "current_first": (first + k - 1,),
                 "span1": tuple(i for i in range(first, first + span) if i not in (first + k, first + k - 1)),
                 "span2": tuple(range(first + span, len(ids) - 1))}
        out.append(TaskPrompt("induction", text, tuple(ids), answer, None, roles, {"k": k, "answer": seq[k]}))
    return out
