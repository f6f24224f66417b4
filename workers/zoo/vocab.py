"""The zoo's closed vocabulary: every word the synthetic corpus can produce.

Word-level on purpose: one word = one token, so "the token at position p" in a ground-truth test is a
word a reader can see, and IOI names are always single tokens (as they are in GPT-2's BPE for common
names, which is what makes the task well defined there).
"""

from __future__ import annotations

import random

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)  # PAD first so its id is 0

OPEN_BRACKETS: tuple[str, ...] = ("(", "[", "{")
CLOSE_BRACKETS: tuple[str, ...] = (")", "]", "}")
CLOSER: dict[str, str] = dict(zip(OPEN_BRACKETS, CLOSE_BRACKETS, strict=True))
PUNCTUATION: tuple[str, ...] = (",", ".")

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Anna", "Tom", "Sarah", "James", "Emma", "David",
    "Lucy", "Peter", "Laura", "Mark", "Julia", "Paul", "Kate", "Sam", "Rose", "Jack",
    "Clara", "Henry", "Grace", "Leo", "Ella", "Oscar", "Nina", "Victor", "Ruth", "Adam",
    "Helen", "Ben", "Irene", "Carl", "Diana", "Eric", "Fiona", "Hugo", "Olga", "Ivan",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "store", "park", "school", "garden", "station", "office", "market", "beach", "library",
    "museum", "kitchen", "hospital", "restaurant", "theatre", "church", "river", "farm",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "drink", "book", "ring", "letter", "bone", "kiss", "ball", "gift", "key", "pen", "hat",
    "cake", "flower", "bag", "coin", "map", "lamp", "cup",
)  # fmt: skip

# Filler grammar lexicon ("the old dog sees a red ball ."): frequent words that make the model a
# language model of something besides the three tasks.
DETERMINERS: tuple[str, ...] = ("the", "a", "every", "some", "this", "that")
ADJECTIVES: tuple[str, ...] = (
    "old", "young", "red", "big", "small", "happy", "quiet", "green", "tall", "cold", "warm", "bright",
)  # fmt: skip
NOUNS: tuple[str, ...] = (
    "dog", "cat", "bird", "child", "teacher", "farmer", "king", "queen", "horse", "boat", "tree",
    "house", "car", "road", "city", "table", "door", "window", "song", "story", "apple", "fish",
)  # fmt: skip
TRANSITIVE_VERBS: tuple[str, ...] = (
    "sees", "likes", "finds", "takes", "holds", "follows", "paints", "reads", "builds", "opens",
    "wants", "carries",
)  # fmt: skip
INTRANSITIVE_VERBS: tuple[str, ...] = (
    "sleeps",
    "runs",
    "sings",
    "waits",
    "laughs",
    "falls",
    "swims",
    "works",
)
PREPOSITIONS: tuple[str, ...] = ("near", "under", "behind", "with", "at", "in", "on")
CONJUNCTIONS: tuple[str, ...] = ("and", "but", "because", "while")
ADVERBS: tuple[str, ...] = ("today", "again", "slowly", "often", "now", "later")

# Words used only by the IOI templates (kept explicit so the vocabulary is closed).
TEMPLATE_WORDS: tuple[str, ...] = (
    "When", "After", "Then", "Afterwards", "While", "and", "went", "to", "the", "at", "a", "an", "had",
    "gave", "handed", "decided", "give", "it", "were", "working", "met", "spent", "day", "lot", "of",
    "fun", "got", "passed", "brought", "wanted", "so", "sent", "said", "was",
)  # fmt: skip

N_SYMBOLS = 64
SYMBOL_SEED = 1729


def induction_symbols(n: int = N_SYMBOLS, seed: int = SYMBOL_SEED) -> tuple[str, ...]:
    """``n`` made-up consonant-vowel-consonant words ("zor", "kib") for the induction task.

    A dedicated vocabulary so induction runs carry no meaning the model could exploit instead of
    copying; deterministic from ``seed`` so every build has the same tokens.
    """
    rng = random.Random(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    taken = {w.lower() for w in _english_words()}
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = rng.choice(consonants) + rng.choice(vowels) + rng.choice(consonants)
        if w in seen or w in taken:
            continue
        seen.add(w)
        out.append(w)
    return tuple(out)


def _english_words() -> list[str]:
    return [
        *NAMES, *PLACES, *OBJECTS, *DETERMINERS, *ADJECTIVES, *NOUNS, *TRANSITIVE_VERBS,
        *INTRANSITIVE_VERBS, *PREPOSITIONS, *CONJUNCTIONS, *ADVERBS, *TEMPLATE_WORDS,
    ]  # fmt: skip


def all_words() -> list[str]:
    """The full vocabulary in a fixed order: special tokens first (PAD=0, BOS=1, EOS=2, UNK=3)."""
    words: list[str] = []
    seen: set[str] = set()
    for w in (*SPECIAL_TOKENS, *OPEN_BRACKETS, *CLOSE_BRACKETS, *PUNCTUATION, *_english_words(),
              *induction_symbols()):  # fmt: skip
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words
