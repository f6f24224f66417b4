"""The case-study task generators (workers/case_studies: induction, brackets, facts, and IOI as a TaskPrompt) with
Gemma 3 270M's tokenizer: deterministic by seed, the answer one token appended to the prompt's tokens, and every
role at the tokens the generator put there."""

from __future__ import annotations

import pytest

from workers.case_studies import brackets, facts, induction, ioi
from workers.case_studies.tasks import TaskPrompt, answer_token, char_spans, with_bos
from workers.zoo.vocab import CLOSER

pytestmark = pytest.mark.slow  # Gemma's tokenizer: ~17 s to build from the GGUF vocabulary

N = 40


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    from workers.models.gguf import load_gemma3_270m_tokenizer

    return load_gemma3_270m_tokenizer()


@pytest.fixture(scope="module")
def tasks(tok) -> dict[str, list[TaskPrompt]]:  # noqa: ANN001
    return {"induction": induction.induction_prompts(N, tok), "brackets": brackets.bracket_prompts(N, tok),
            "facts": facts.fact_prompts(N, tok),
            "ioi": [ioi.task_prompt(p, tok) for p in ioi.ioi_prompts(N, ioi.single_token_names(tok))]}


def decode(tok, p: TaskPrompt, role: str) -> list[str]:  # noqa: ANN001
    return [tok.decode([p.input_ids[i]]) for i in p.roles[role]]


def test_deterministic_by_seed(tok, tasks) -> None:  # noqa: ANN001
    again = {"induction": induction.induction_prompts(N, tok), "brackets": brackets.bracket_prompts(N, tok),
             "facts": facts.fact_prompts(N, tok)}
    for name, prompts in again.items():
        assert prompts == tasks[name], name
    assert induction.induction_prompts(N, tok, seed=1) != tasks["induction"]
    assert brackets.bracket_prompts(N, tok, seed=1) != tasks["brackets"]
    assert facts.fact_prompts(N, tok, seed=1) != tasks["facts"]


def test_tokens_answer_and_roles_are_consistent(tok, tasks) -> None:  # noqa: ANN001
    for name, prompts in tasks.items():
        assert len(prompts) == N and len({p.text for p in prompts}) == N, name
        for p in prompts:
            assert p.task == name
            assert list(p.input_ids) == with_bos(tok, p.text) and p.input_ids[0] == tok.bos_token_id
            # the answer (and the distractor) is one token that follows the prompt's own tokens
            both = tok.encode(p.text + tok.decode([p.answer_id]), add_special_tokens=False)
            assert both == [*p.input_ids[1:], p.answer_id], p.text
            assert p.distractor_id != p.answer_id
            assert p.roles["END"] == (len(p.input_ids) - 1,)
            every = [i for pos in p.roles.values() for i in pos]
            assert all(0 < i < len(p.input_ids) for i in every), (p.text, p.roles)
            assert p.target == ({"logit": p.answer_id} if p.distractor_id is None
                                else {"diff": [p.answer_id, p.distractor_id]})


def test_induction_roles(tok, tasks) -> None:  # noqa: ANN001
    for p in tasks["induction"]:
        ids = p.input_ids
        (a,), (c,), (end,) = p.roles["answer_first"], p.roles["current_first"], p.roles["END"]
        assert ids[a] == p.answer_id and c == a - 1 and ids[c] == ids[end]  # the repeat's last token seen before
        words = p.text.split()
        assert len(set(words[: induction.SPAN])) == induction.SPAN  # distinct words: one earlier occurrence
        assert words[induction.SPAN:] == words[: p.meta["k"]] and " " + p.meta["answer"] == tok.decode([p.answer_id])
        assert p.distractor_id is None


def test_bracket_roles(tok, tasks) -> None:  # noqa: ANN001
    for p in tasks["brackets"]:
        right, wrong = tok.decode([p.answer_id]), tok.decode([p.distractor_id])
        assert right == p.meta["right"] and wrong == p.meta["wrong"] and right != wrong
        # the right closer closes the innermost bracket still open: replay the line on a stack
        stack = []
        for ch in p.text:
            if ch in CLOSER:
                stack.append(ch)
            elif ch in CLOSER.values():
                assert CLOSER[stack.pop()] == ch, p.text
        assert stack and CLOSER[stack[-1]] == right
        (opener,) = p.roles["opener"]
        opener_char = next(k for k, v in CLOSER.items() if v == right)
        assert opener_char in tok.decode([p.input_ids[opener]]), (p.text, decode(tok, p, "opener"))
        assert all(tok.decode([p.input_ids[i]]) for i in p.roles["closed"])
    assert {p.meta["depth"] for p in tasks["brackets"]} == {2, 3, 4}


def test_fact_roles_and_refusals(tok, tasks) -> None:  # noqa: ANN001
    kept, refused = facts.usable_facts(tok)
    assert len(kept) + len(refused) == sum(len(facts._answers(r)) for r, _, _ in facts.TEMPLATES)
    for t, country in refused:
        relation, template, _ = facts.TEMPLATES[t]
        text = template.format(c=country)
        refused_for = (answer_token(tok, text, " " + facts._answers(relation)[country]) is None
                       or char_spans(tok, with_bos(tok, text), text) is None)
        assert refused_for, text
    for p in tasks["facts"]:
        country = next(c for c in facts.FACTS if c in p.text)
        assert "".join(decode(tok, p, "subject") + decode(tok, p, "subject_last")).strip() == country
        assert tok.decode([p.answer_id]).strip() == p.meta["answer"]
        answers = facts._answers(p.meta["relation"])
        assert answers[country] == p.meta["answer"] and p.meta["distractor"] in answers.values()
        assert all(any(w in tok.decode([p.input_ids[i]]) for w in ("capital", "city", "official", "language", "speak"))
                   for i in p.roles["relation"])
    assert {p.meta["relation"] for p in tasks["facts"]} == {"capital", "language"}


def test_ioi_task_prompt_roles(tok, tasks) -> None:  # noqa: ANN001
    for p in tasks["ioi"]:
        assert decode(tok, p, "IO") == [" " + p.meta["io"]]
        assert decode(tok, p, "S1") == decode(tok, p, "S2") == [" " + p.meta["s"]]
        assert p.roles["S1"][0] < p.roles["S2"][0] and p.target == {"diff": [p.answer_id, p.distractor_id]}
