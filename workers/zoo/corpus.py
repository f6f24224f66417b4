"""Synthetic task corpus, deterministic from a seed: brackets, induction, IOI-style templates, filler.

Every example knows its answer token and where in the prompt the answer's information lives
(``source_positions``), so circuit tests have ground truth: an attribution graph for the answer
logit should route through those positions.

Token positions count the BOS token at 0: ``prompt_tokens[0] == "<bos>"`` and
``prompt_tokens[source_positions[i]]`` is the token the answer depends on. ``prompt`` is the text the
tokenizer turns back into ``prompt_tokens`` (its post-processor adds the BOS).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from workers.zoo import vocab as V

Task = Literal["brackets", "induction", "ioi", "filler"]
TASKS: tuple[Task, ...] = ("brackets", "induction", "ioi", "filler")
SCORED_TASKS: tuple[Task, ...] = ("brackets", "induction", "ioi")  # tasks with a meaningful answer


@dataclass(frozen=True)
class Example:
    task: Task
    prompt: str  # text without the BOS; tokenizer(prompt) gives prompt_tokens
    prompt_tokens: tuple[str, ...]  # starts with "<bos>"
    answer: str  # the single correct next token after the prompt
    source_positions: tuple[int, ...]  # indices into prompt_tokens holding the answer's information
    s_name: str | None = None  # IOI only: the subject (repeated) name, for logit difference IO - S
    template: str = ""  # IOI template id and order (e.g. "t3-ABBA"); bracket depth etc. for others
    completion: tuple[str, ...] = ()  # tokens after the answer in the training text (brackets only)
    # How many leading next-token targets of the training text are random draws no model can predict
    # (induction: the run and the first copied token). Training puts no loss on them.
    noise_targets: int = 0

    def training_tokens(self) -> list[str]:
        """The full training sequence: prompt, answer, the rest of the text, EOS."""
        return [*self.prompt_tokens, self.answer, *self.completion, V.EOS]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Example:
        d = json.loads(line)
        for k in ("prompt_tokens", "source_positions", "completion"):
            d[k] = tuple(d[k])
        return cls(**d)


def _example(task: Task, words: Sequence[str], answer: str, sources: Sequence[int], **kw) -> Example:
    return Example(
        task=task,
        prompt=" ".join(words),
        prompt_tokens=(V.BOS, *words),
        answer=answer,
        source_positions=tuple(sources),
        **kw,
    )


# --------------------------------------------------------------------------------------------- brackets
MAX_BRACKET_DEPTH = 3


def bracket_example(rng: random.Random) -> Example:
    """A balanced string of (), [], {} cut just before one of its closing brackets.

    Generation rule (which is what makes the answer the argmax): whenever a bracket is open the
    next token is a close with probability >= 1/2 and each of the three opens has at most 1/6, so a
    model that tracks the stack puts the matching close on top. The source position is the matching
    open bracket.
    """
    length = 2 * rng.randint(2, 9)
    seq: list[str] = []
    stack: list[tuple[str, int]] = []  # (open bracket, index in seq)
    match: list[int | None] = []  # for each closing bracket, index of its open
    while len(seq) < length:
        remaining = length - len(seq)
        must_close = len(stack) == remaining or len(stack) == MAX_BRACKET_DEPTH
        if stack and (must_close or rng.random() < 0.5):
            b, i = stack.pop()
            seq.append(V.CLOSER[b])
            match.append(i)
        else:
            b = rng.choice(V.OPEN_BRACKETS)
            stack.append((b, len(seq)))
            seq.append(b)
            match.append(None)
    closes = [j for j, m in enumerate(match) if m is not None]
    cut = rng.choice(closes)
    open_idx = match[cut]
    assert open_idx is not None
    depth = sum(1 for t in seq[:cut] if t in V.OPEN_BRACKETS) - sum(
        1 for t in seq[:cut] if t in V.CLOSE_BRACKETS
    )
    return _example(
        "brackets",
        seq[:cut],
        seq[cut],
        [open_idx + 1],  # +1: BOS at position 0
        template=f"depth{depth}",
        completion=tuple(seq[cut + 1 :]),
    )


# -------------------------------------------------------------------------------------------- induction
def induction_example(rng: random.Random, symbols: Sequence[str]) -> Example:
    """``s1 … sn  [f1 f2]  s_i … s_j`` → ``s_{j+1}``: a run of random symbols, up to two more, then a
    copy of a stretch of the run. The last prompt token A = s_j occurs exactly once before, followed by
    B = s_{j+1}: the answer, whose earlier position is the source.

    Symbols are drawn with replacement: a run of distinct symbols would teach "never repeat a token",
    which fights the copying an induction head does. The copied stretch is long on average because
    every copied token after the first is itself an induction target, and dense signal is what gets a
    tiny model past the plateau before induction heads form.
    """
    while True:
        n = rng.randint(4, 20)
        head = [rng.choice(symbols) for _ in range(n + rng.randint(0, 2))]
        run = head[:n]
        unique = [j for j in range(n - 1) if head.count(run[j]) == 1]  # A must be unambiguous
        if unique:
            break
    j = rng.choice(unique)  # A = run[j], B = run[j + 1]
    i = rng.randint(max(0, j - 2 * (n // 3)), j)  # copy starts at run[i]: usually a long stretch
    words = [*head, *run[i : j + 1]]
    return _example(
        "induction", words, run[j + 1], [j + 2], template=f"copy{j + 1 - i}", noise_targets=len(head) + 1
    )


# -------------------------------------------------------------------------------------------------- IOI
# {A} and {B} are introduced in that order; {S} repeats one of them; the prompt ends where the other
# (the indirect object) is the only sensible next word.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {P} , {S} gave a {O} to",
    "After {A} and {B} went to the {P} , {S} handed the {O} to",
    "Then , {A} and {B} had a lot of fun at the {P} . {S} gave it to",
    "While {A} and {B} were working at the {P} , {S} decided to give a {O} to",
    "When {A} and {B} met at the {P} , {S} brought a {O} to",
    "Afterwards {A} and {B} spent the day at the {P} . {S} passed the {O} to",
    "{A} and {B} got a {O} at the {P} . {S} wanted to give it to",
    "When {A} and {B} went to the {P} , {S} sent a {O} to",
    "After the day at the {P} , {A} and {B} had a {O} . {S} said it was to",
)


def ioi_example(rng: random.Random) -> Example:
    """An IOI prompt; ABBA (IO first) or BABA (S first) with equal probability. Answer: the IO name;
    source positions: where the IO name occurs in the prompt."""
    t = rng.randrange(len(IOI_TEMPLATES))
    io, s = rng.sample(V.NAMES, 2)
    order = rng.choice(("ABBA", "BABA"))
    a, b = (io, s) if order == "ABBA" else (s, io)
    filled = {"{A}": a, "{B}": b, "{S}": s, "{P}": rng.choice(V.PLACES), "{O}": rng.choice(V.OBJECTS)}
    words = [filled.get(w, w) for w in IOI_TEMPLATES[t].split()]
    sources = [i + 1 for i, w in enumerate(words) if w == io]
    return _example("ioi", words, io, sources, s_name=s, template=f"t{t}-{order}")


# ----------------------------------------------------------------------------------------------- filler
def _noun_phrase(rng: random.Random) -> list[str]:
    if rng.random() < 0.2:
        return [rng.choice(V.NAMES)]
    words = [rng.choice(V.DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(V.ADJECTIVES))
    words.append(rng.choice(V.NOUNS))
    return words


def _clause(rng: random.Random) -> list[str]:
    words = _noun_phrase(rng)
    if rng.random() < 0.6:
        words += [rng.choice(V.TRANSITIVE_VERBS), *_noun_phrase(rng)]
    else:
        words.append(rng.choice(V.INTRANSITIVE_VERBS))
    if rng.random() < 0.3:
        words += [rng.choice(V.PREPOSITIONS), *_noun_phrase(rng)]
    if rng.random() < 0.2:
        words.append(rng.choice(V.ADVERBS))
    return words


def filler_example(rng: random.Random) -> Example:
    """One to three simple sentences; the 'answer' is the final full stop (not a scored task)."""
    words: list[str] = []
    for _ in range(rng.randint(1, 3)):
        words += _clause(rng)
        if rng.random() < 0.3:
            words += [rng.choice(V.CONJUNCTIONS), *_clause(rng)]
        words.append(".")
    return _example("filler", words[:-1], words[-1], [])


# ---------------------------------------------------------------------------------------------- corpora
@dataclass(frozen=True)
class CorpusSpec:
    """What the zoo trains and evaluates on. Part of the zoo's build key."""

    n_train: int = 120_000
    n_heldout_per_task: int = 500
    train_seed: int = 0
    heldout_seed: int = 1_000_003
    mix: dict[str, float] = field(
        default_factory=lambda: {"brackets": 0.22, "induction": 0.40, "ioi": 0.30, "filler": 0.08}
    )

    def to_dict(self) -> dict:
        return asdict(self)


def example_stream(seed: int, mix: dict[str, float]) -> Iterator[Example]:
    """An endless, seed-determined stream of examples with tasks drawn from ``mix``."""
    rng = random.Random(seed)
    symbols = V.induction_symbols()
    tasks = list(mix)
    weights = [mix[t] for t in tasks]
    while True:
        task = rng.choices(tasks, weights)[0]
        if task == "brackets":
            yield bracket_example(rng)
        elif task == "induction":
            yield induction_example(rng, symbols)
        elif task == "ioi":
            yield ioi_example(rng)
        elif task == "filler":
            yield filler_example(rng)
        else:
            raise ValueError(f"unknown task {task!r} in mix; known: {TASKS}")


def train_examples(spec: CorpusSpec) -> list[Example]:
    stream = example_stream(spec.train_seed, spec.mix)
    return [next(stream) for _ in range(spec.n_train)]


def heldout_examples(spec: CorpusSpec, train: Iterable[Example]) -> list[Example]:
    """``n_heldout_per_task`` examples of each task whose prompts never occur in ``train``.

    Drawn from a stream with a different seed; prompts seen in training are rejected (short bracket
    strings mostly), so held-out accuracy measures generalisation, not memory.
    """
    if spec.heldout_seed == spec.train_seed:
        raise ValueError("heldout_seed must differ from train_seed")
    seen = {ex.prompt for ex in train}
    uniform = {t: 1.0 for t in TASKS}
    stream = example_stream(spec.heldout_seed, uniform)
    out: dict[str, list[Example]] = {t: [] for t in TASKS}
    held: set[str] = set()
    for ex in stream:
        if ex.prompt in seen or ex.prompt in held or len(out[ex.task]) >= spec.n_heldout_per_task:
            if all(len(v) >= spec.n_heldout_per_task for v in out.values()):
                break
            continue
        held.add(ex.prompt)
        out[ex.task].append(ex)
    return [ex for t in TASKS for ex in out[t]]


def write_jsonl(examples: Iterable[Example], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for ex in examples:
            f.write(ex.to_json() + "\n")


def read_jsonl(path: Path) -> list[Example]:
    with path.open() as f:
        return [Example.from_json(line) for line in f if line.strip()]
