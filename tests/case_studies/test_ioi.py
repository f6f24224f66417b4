"""The IOI prompt generator (workers/case_studies/ioi.py): deterministic, balanced, well-formed; with Gemma 3
270M's tokenizer, single-token names and the IO / S token positions."""

from __future__ import annotations

from collections import Counter

import pytest

from workers.case_studies.ioi import NAME_SLOT, NAMES, TEMPLATES, IOIPrompt, ioi_prompts, tokenise


def test_prompts_are_deterministic_and_differ_by_seed() -> None:
    assert ioi_prompts(50) == ioi_prompts(50)
    assert ioi_prompts(50, seed=1) != ioi_prompts(50)
    assert ioi_prompts(20) == ioi_prompts(50)[:20]  # a longer run extends a shorter one


def test_prompts_are_well_formed_and_balanced() -> None:
    prompts = ioi_prompts(400)
    orders = Counter(p.template.split("-")[1] for p in prompts)
    assert orders == {"ABBA": 200, "BABA": 200}
    assert len({p.template.split("-")[0] for p in prompts}) == len(TEMPLATES)
    for p in prompts:
        assert p.io != p.s and {p.io, p.s} <= set(NAMES)
        words = p.text.replace(",", " ").replace(".", " ").split()
        assert words.count(p.io) == 1 and words.count(p.s) == 2, p.text
        first = min(words.index(p.io), words.index(p.s))
        assert words[first] == (p.io if p.template.endswith("ABBA") else p.s), p
        assert not p.text.endswith(" ")


def test_every_name_in_a_template_follows_a_space() -> None:
    """So a name is the same token at each of its occurrences (the leading space is part of the token)."""
    for t in TEMPLATES:
        slots = list(NAME_SLOT.finditer(t))
        assert len(slots) == 3, t
        assert all(m.start() > 0 and t[m.start() - 1] == " " for m in slots), t


def test_names_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="two distinct names"):
        ioi_prompts(3, names=["Mary", "Mary"])


@pytest.mark.slow
def test_gemma_tokens_of_the_names_and_positions(gemma) -> None:  # noqa: ANN001
    from workers.case_studies.ioi import single_token_names

    _, tok = gemma
    names = single_token_names(tok)
    assert len(names) >= 40, names
    for n in names:
        (i,) = tok.encode(" " + n, add_special_tokens=False)
        assert tok.decode([i]) == " " + n
    for p in ioi_prompts(100, names):
        t = tokenise(p, tok)
        assert list(t.input_ids) == tok(p.text).input_ids  # BOS + the text, as the tokenizer itself does it
        assert [tok.decode([t.input_ids[i]]) for i in t.io_positions] == [" " + p.io]
        assert [tok.decode([t.input_ids[i]]) for i in t.s_positions] == [" " + p.s] * 2
        io_first = t.io_positions[0] < t.s_positions[0]
        assert io_first == p.template.endswith("ABBA")
    # a name of several tokens is dropped by the filter, and refused by tokenise rather than mis-scored
    assert single_token_names(tok, ["Mary", "Xylandrix"]) == ("Mary",)
    with pytest.raises(ValueError, match="single_token_names"):
        tokenise(IOIPrompt("When Xylandrix and Mary met, Mary gave it to", "Xylandrix", "Mary", "x"), tok)
