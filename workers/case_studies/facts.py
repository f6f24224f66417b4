"""Factual recall prompts: "The capital of France is" → " Paris", against a distractor of the same type (another
country's capital; another language for "The official language of ... is").

The facts are a hand-curated list (data). A prompt is a (fact, template) pair drawn by seed; the distractor is
another fact's answer of the same relation drawn by seed. Refusal rule: a fact whose answer or distractor is
not one token appended to the prompt is never used (``usable_facts``: checked once per (fact, template), the
kept and refused facts are listed by :func:`usable_facts`).

Roles: ``subject`` (the tokens of the country's name), ``subject_last`` (its last token, where the paper's and
ROME's factual-recall work find the fact looked up), ``relation`` (the relation's words: "capital", "language"),
``END``.
"""

from __future__ import annotations

import random

from workers.case_studies.tasks import TaskPrompt, Tokenizer, answer_token, char_spans, with_bos

# country -> (capital, official language); None where a language is not a clean single answer.
FACTS: dict[str, tuple[str, str | None]] = {
    "France": ("Paris", "French"), "Germany": ("Berlin", "German"), "Italy": ("Rome", "Italian"),
    "Spain": ("Madrid", "Spanish"), "Japan": ("Tokyo", "Japanese"), "China": ("Beijing", "Chinese"),
    "Russia": ("Moscow", "Russian"), "England": ("London", "English"), "Egypt": ("Cairo", "Arabic"),
    "Greece": ("Athens", "Greek"), "Portugal": ("Lisbon", "Portuguese"), "Austria": ("Vienna", "German"),
    "Ireland": ("Dublin", "English"), "Norway": ("Oslo", "Norwegian"), "Sweden": ("Stockholm", "Swedish"),
    "Finland": ("Helsinki", "Finnish"), "Poland": ("Warsaw", "Polish"), "Hungary": ("Budapest", "Hungarian"),
    "Turkey": ("Ankara", "Turkish"), "Kenya": ("Nairobi", None), "Peru": ("Lima", "Spanish"),
    "Canada": ("Ottawa", None), "Australia": ("Canberra", "English"), "Thailand": ("Bangkok", "Thai"),
    "Denmark": ("Copenhagen", "Danish"), "Cuba": ("Havana", "Spanish"), "Iran": ("Tehran", "Persian"),
    "Argentina": ("Buenos", "Spanish"), "Mexico": ("Mexico", "Spanish"), "Brazil": ("Brasília", "Portuguese"),
    "Korea": ("Seoul", "Korean"), "Vietnam": ("Hanoi", "Vietnamese"), "Netherlands": ("Amsterdam", "Dutch"),
    "Belgium": ("Brussels", None), "Switzerland": ("Bern", None), "Israel": ("Jerusalem", "Hebrew"),
    "Iraq": ("Baghdad", "Arabic"), "Syria": ("Damascus", "Arabic"), "Chile": ("Santiago", "Spanish"),
    "Colombia": ("Bogotá", "Spanish"), "India": ("Delhi", None), "Pakistan": ("Islamabad", "Urdu"),
    "Indonesia": ("Jakarta", "Indonesian"), "Philippines": ("Manila", None), "Scotland": ("Edinburgh", "English"),
    "Wales": ("Cardiff", None), "Ukraine": ("Kyiv", "Ukrainian"), "Romania": ("Bucharest", "Romanian"),
    "Morocco": ("Rabat", "Arabic"), "Nigeria": ("Abuja", "English"), "Ethiopia": ("Addis", None),
}  # fmt: skip

# (relation, template, words of the relation) ; {c} is the country
TEMPLATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("capital", "The capital of {c} is", ("capital",)),
    ("capital", "The capital city of {c} is", ("capital", "city")),
    ("capital", "{c}'s capital city is", ("capital", "city")),
    ("language", "The official language of {c} is", ("official", "language")),
    ("language", "In {c}, most people speak", ("speak",)),
)


def _answers(relation: str) -> dict[str, str]:
    idx = 0 if relation == "capital" else 1
    return {c: v[idx] for c, v in FACTS.items() if v[idx] is not None}


def usable_facts(tokenizer: Tokenizer) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """((template index, country) pairs kept, pairs refused): kept when the answer is one token appended to the
    prompt and the prompt's tokens decode piece by piece to it."""
    kept, refused = [], []
    for t, (relation, template, _) in enumerate(TEMPLATES):
        for country, answer in _answers(relation).items():
            text = template.format(c=country)
            ok = answer_token(tokenizer, text, " " + answer) is not None
            ok = ok and char_spans(tokenizer, with_bos(tokenizer, text), text) is not None
            (kept if ok else refused).append((t, country))
    return kept, refused


def fact_prompts(n: int, tokenizer: Tokenizer, seed: int = 0) -> list[TaskPrompt]:
    """``n`` distinct (template, country) prompts drawn by seed from the usable ones, relations alternating; the
    distractor is another usable answer of the same relation (different from the right one)."""
    kept, _ = usable_facts(tokenizer)
    rng = random.Random(seed)
    by_relation: dict[str, list[tuple[int, str]]] = {}
    for t, c in kept:
        by_relation.setdefault(TEMPLATES[t][0], []).append((t, c))
    for pairs in by_relation.values():
        rng.shuffle(pairs)
    order = sorted(by_relation)
    if n > len(kept):
        raise ValueError(f"only {len(kept)} usable fact prompts, {n} asked")
    out: list[TaskPrompt] = []
    i = 0
    while len(out) < n:
        pairs = by_relation[order[i % len(order)]]
        i += 1
        if not pairs:
            continue
        t, country = pairs.pop()
        relation, template, rel_words = TEMPLATES[t]
        answers = _answers(relation)
        text = template.format(c=country)
        right = answers[country]
        wrong_pool = sorted({a for c, a in answers.items() if a != right and (t, c) in set(kept)})
        wrong = rng.choice(wrong_pool)
        ids = with_bos(tokenizer, text)
        spans = char_spans(tokenizer, ids, text)
        assert spans is not None  # usable_facts checked it
        a, b = text.index(country), text.index(country) + len(country)
        subject = tuple(i for i, (s, e) in enumerate(spans) if s < b and e > a)
        rel_chars = [(text.index(w), text.index(w) + len(w)) for w in rel_words]
        relation_pos = tuple(i for i, (s, e) in enumerate(spans) if any(s < rb and e > ra for ra, rb in rel_chars))
        answer, distractor = answer_token(tokenizer, text, " " + right), answer_token(tokenizer, text, " " + wrong)
        if distractor is None:  # the wrong answer is usable after its own prompt but not after this one
            continue
        assert answer is not None
        roles = {"END": (len(ids) - 1,), "subject_last": subject[-1:], "subject": subject[:-1],
                 "relation": relation_pos}
        out.append(TaskPrompt("facts", text, tuple(ids), answer, distractor, roles,
                              {"relation": relation, "answer": right, "distractor": wrong, "template": t}))
    return out
