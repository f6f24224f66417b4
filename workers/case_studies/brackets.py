"""Bracket prompts: a line of code-like text with nested, partly closed brackets; the next token is the closer of
the innermost bracket still open.

``total = max(values[len(items) + 1`` → ``]``. Depth 2–4 of ``(`` (a call), ``[`` (an index) and ``{`` (a dict
literal), an atom inside, the innermost levels (at least one, never all) closed again, then an operator or comma
and another atom. The target is logit(right
closer) − logit(a wrong closer): the closer of another still-open bracket of a different type if there is one,
else a closer of a type not open. Deterministic by seed.

Refusal rule: a drawn line is skipped (and counted in ``meta["refused_before"]``) when the closer is not one token
appended to the line's tokens (Gemma merges some closer runs, e.g. ``])``, into one token) or when the
tokens do not decode piece by piece to the line (so the opener's token cannot be located).

Roles: ``opener`` (the token holding the matching opening bracket), ``open_other`` (the other still-open
openers), ``closed`` (the tokens from the first closed bracket's opener to its closer), ``END`` (the last token,
an atom).
"""

from __future__ import annotations

import random

from workers.case_studies.tasks import TaskPrompt, Tokenizer, answer_token, char_spans, with_bos
from workers.zoo.vocab import CLOSER

FUNCS = ("len", "max", "min", "sum", "sorted", "print", "list", "str", "abs", "int", "round", "set")
VARS = ("x", "y", "items", "data", "values", "key", "count", "name", "row", "value", "result", "index", "matrix")
KEYS = ("id", "name", "size", "value", "type", "count")
LHS = ("total", "out", "result", "answer", "y", "z", "tmp")
JOINERS = (" + ", " * ", ", ", " - ")
ATOMS = ("1", "2", "10", "n", "k", "x", "offset", "step", "size")


def _opener(rng: random.Random, kind: str) -> str:
    if kind == "(":
        return rng.choice(FUNCS) + "("
    if kind == "[":
        return rng.choice(VARS) + "["
    return '{"' + rng.choice(KEYS) + '": '


def bracket_prompts(n: int, tokenizer: Tokenizer, seed: int = 0, max_tries: int = 100) -> list[TaskPrompt]:
    rng = random.Random(seed)
    out: list[TaskPrompt] = []
    refused = 0
    while len(out) < n:
        if refused > max_tries * max(n, 1):
            raise ValueError(f"refused {refused} bracket lines for {len(out)} kept: the tokenizer merges closers")
        depth = rng.randint(2, 4)
        kinds = [rng.choice("([{") for _ in range(depth)]
        n_closed = rng.randint(1, depth - 1)  # innermost levels closed again; at least one stays open
        text = rng.choice(LHS) + " = "
        opener_at: list[int] = []  # character index of each level's bracket
        for kind in kinds:
            piece = _opener(rng, kind)
            opener_at.append(len(text) + piece.index(kind))
            text += piece
        text += rng.choice(VARS)
        for kind in reversed(kinds[depth - n_closed:]):
            text += CLOSER[kind]
        closed_end = len(text)
        text += rng.choice(JOINERS) + rng.choice(ATOMS)  # the closer follows an atom: Gemma merges runs of closers
        open_kinds = kinds[: depth - n_closed]
        right = CLOSER[open_kinds[-1]]
        others = [CLOSER[k] for k in open_kinds[:-1] if CLOSER[k] != right]
        wrong = others[-1] if others else rng.choice(sorted(set(CLOSER.values()) - {right}))
        answer, distractor = answer_token(tokenizer, text, right), answer_token(tokenizer, text, wrong)
        ids = with_bos(tokenizer, text)
        spans = char_spans(tokenizer, ids, text)
        if answer is None or distractor is None or spans is None:
            refused += 1
            continue

        def token_at(char: int, spans: list[tuple[int, int]] = spans) -> int:
            return next(i for i, (a, b) in enumerate(spans) if a <= char < b)

        level = depth - n_closed - 1
        closed_chars = range(opener_at[level + 1], closed_end)
        roles = {"END": (len(ids) - 1,), "opener": (token_at(opener_at[level]),),
                 "open_other": tuple(sorted({token_at(c) for c in opener_at[:level]})),
                 "closed": tuple(sorted({token_at(c) for c in closed_chars}))}
        out.append(TaskPrompt("brackets", text, tuple(ids), answer, distractor, roles,
                              {"right": right, "wrong": wrong, "depth": depth, "refused_before": refused}))
    return out
