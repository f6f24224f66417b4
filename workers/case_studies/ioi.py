"""Indirect object identification (IOI) prompts in natural English, deterministic from a seed.

"When Mary and John went to the store, John gave a drink to" → " Mary": two names are introduced (A, B), one
of them (the subject S) is repeated, and the next token is the other (the indirect object IO). ABBA orders
put IO first, BABA orders put S first, in equal numbers. The target of a circuit is logit(IO) − logit(S).

For a real tokenizer, ``single_token_names`` keeps the names that are one token with their leading space
(every name in a template follows a space), so IO and S are single-token targets and the IO name's token
positions are well defined (``tokenise``). This module needs no torch; a tokenizer is passed in.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from workers.case_studies.tasks import TaskPrompt, Tokenizer
from workers.zoo.vocab import NAMES as ZOO_NAMES
from workers.zoo.vocab import OBJECTS, PLACES

# The zoo's names (its IOI task's, workers/zoo/vocab.py) and more common English first names; a tokenizer keeps
# those that are one token after a space. Places and objects are the zoo's.
NAMES: tuple[str, ...] = (
    *ZOO_NAMES,
    "Michael", "Robert", "William", "Thomas", "Daniel", "Andrew", "Joseph", "Kevin", "George", "Edward",
    "Richard", "Steven", "Elizabeth", "Jennifer", "Linda", "Susan", "Jessica", "Karen", "Lisa", "Emily",
    "Rachel", "Amy", "Jane", "Alex", "Max", "Mike", "Dan", "Tim", "Frank", "Ryan",
)  # fmt: skip

# {A} and {B} are introduced in that order; {S} repeats one of them; the prompt ends where the other (the
# IO) is the expected next word. Every name follows a space, so it is the same token wherever it occurs.
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {P}, {S} gave a {O} to",
    "After {A} and {B} went to the {P}, {S} handed the {O} to",
    "Then, {A} and {B} had a lot of fun at the {P}. {S} gave it to",
    "While {A} and {B} were working at the {P}, {S} decided to give a {O} to",
    "When {A} and {B} met at the {P}, {S} brought a {O} to",
    "Afterwards, {A} and {B} spent the day at the {P}. {S} passed the {O} to",
    "Yesterday {A} and {B} got a {O} at the {P}. {S} wanted to give it to",
    "When {A} and {B} arrived at the {P}, {S} sent a {O} to",
    "After the day at the {P}, {A} and {B} found a {O}. {S} gave the {O} to",
)
NAME_SLOT = re.compile(r"\{[ABS]\}")


@dataclass(frozen=True)
class IOIPrompt:
    text: str  # the prompt, without BOS; the answer is " " + io
    io: str  # the indirect object: the name to predict
    s: str  # the subject: the repeated name
    template: str  # template index and order, e.g. "t3-ABBA"


@dataclass(frozen=True)
class IOITokens:
    """A prompt tokenised: ``input_ids`` starts with BOS; ``io_positions`` index the IO name's token in it."""

    input_ids: tuple[int, ...]
    io_id: int
    s_id: int
    io_positions: tuple[int, ...]
    s_positions: tuple[int, ...]


def ioi_prompts(n: int, names: Sequence[str] = NAMES, seed: int = 0) -> list[IOIPrompt]:
    """``n`` prompts: template, names, place and object drawn from ``random.Random(seed)``; ABBA and BABA
    alternate (equal numbers, IO never always in the same slot)."""
    if len(set(names)) < 2:
        raise ValueError(f"IOI needs at least two distinct names, got {list(names)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.randrange(len(TEMPLATES))
        io, s = rng.sample(list(names), 2)
        order = "ABBA" if i % 2 == 0 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        text = TEMPLATES[t].format(A=a, B=b, S=s, P=rng.choice(PLACES), O=rng.choice(OBJECTS))
        out.append(IOIPrompt(text, io, s, f"t{t}-{order}"))
    return out


def single_token_names(tokenizer: Tokenizer, names: Sequence[str] = NAMES) -> tuple[str, ...]:
    """The names that ``tokenizer`` encodes as one token with a leading space (as they occur in templates)."""
    return tuple(n for n in names if len(tokenizer.encode(" " + n, add_special_tokens=False)) == 1)


def tokenise(prompt: IOIPrompt, tokenizer: Tokenizer) -> IOITokens:
    """The prompt's token ids (BOS first) and where the IO and S names' tokens are."""
    ids = tokenizer.encode(prompt.text, add_special_tokens=False)
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    (io_id,), (s_id,) = (_one_token(tokenizer, name) for name in (prompt.io, prompt.s))
    io_positions = tuple(i for i, t in enumerate(ids) if t == io_id)
    s_positions = tuple(i for i, t in enumerate(ids) if t == s_id)
    if len(io_positions) != 1 or len(s_positions) != 2:
        raise ValueError(f"{prompt.text!r}: the IO name {prompt.io!r} is at token positions {io_positions} and the "
                         f"S name {prompt.s!r} at {s_positions}; expected one and two")
    return IOITokens(tuple(ids), io_id, s_id, io_positions, s_positions)


def task_prompt(prompt: IOIPrompt, tokenizer: Tokenizer) -> TaskPrompt:
    """The prompt as a case-study :class:`TaskPrompt`: target logit(IO) − logit(S); roles ``END``, ``IO``, ``S1``
    (the subject's first occurrence) and ``S2`` (its repeat)."""
    t = tokenise(prompt, tokenizer)
    roles = {"END": (len(t.input_ids) - 1,), "IO": t.io_positions, "S1": t.s_positions[:1], "S2": t.s_positions[1:]}
    return TaskPrompt("ioi", prompt.text, t.input_ids, t.io_id, t.s_id, roles,
                      {"io": prompt.io, "s": prompt.s, "template": prompt.template})


def corpus_items(prompts: Sequence[IOIPrompt], tokenizer: Tokenizer) -> list[dict]:
    """The prompts as ``POST /corpora`` items: targets logit(IO) − logit(S) (token ids, so no name is re-tokenised
    by the worker) and the top logits."""
    items = []
    for p in prompts:
        t = tokenise(p, tokenizer)
        items.append({"text": p.text, "targets": [{"diff": [t.io_id, t.s_id]}, "top"]})
    return items


def _one_token(tokenizer: Tokenizer, name: str) -> list[int]:
    ids = tokenizer.encode(" " + name, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"' {name}' is {len(ids)} tokens for this tokenizer; keep names from single_token_names()")
    return ids


def template_sentences(n: int, names: Sequence[str] = NAMES[:10], seed: int = 0) -> list[str]:
    """Short sentences for smoke-training dictionaries without a corpus: IOI sentences with their answer,
    alternating with plain descriptive ones."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(list(names), 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        if i % 2 == 0:
            out.append(f"When {a} and {b} went to the {place}, {b} gave a {obj} to {a}.")
        else:
            out.append(f"{a} walked to the {place} in the morning and bought a {obj} for {b}.")
    return out
