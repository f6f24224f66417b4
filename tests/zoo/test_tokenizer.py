"""The word-level tokenizer loads offline through AutoTokenizer and agrees with the corpus."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from workers.zoo import vocab as V
from workers.zoo.corpus import CorpusSpec, example_stream
from workers.zoo.tokenizer import build_tokenizer, save_tokenizer, token_ids


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("tok")
    save_tokenizer(build_tokenizer(), d)
    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def test_special_token_ids(saved_tokenizer) -> None:
    assert (saved_tokenizer.pad_token_id, saved_tokenizer.bos_token_id, saved_tokenizer.eos_token_id) == (
        0,
        1,
        2,
    )
    assert saved_tokenizer.unk_token == V.UNK
    assert len(saved_tokenizer) == len(V.all_words()) < 400


def test_round_trip_on_the_corpus(saved_tokenizer) -> None:
    vocab = saved_tokenizer.get_vocab()
    stream = example_stream(21, CorpusSpec().mix)
    for _ in range(400):
        ex = next(stream)
        ids = saved_tokenizer(ex.prompt)["input_ids"]
        assert ids[0] == saved_tokenizer.bos_token_id
        assert tuple(saved_tokenizer.convert_ids_to_tokens(ids)) == ex.prompt_tokens
        assert ids == token_ids(vocab, ex.prompt_tokens)
        assert saved_tokenizer.decode(ids, skip_special_tokens=True) == ex.prompt


def test_punctuation_and_brackets_split_without_spaces(saved_tokenizer) -> None:
    toks = saved_tokenizer.convert_ids_to_tokens(saved_tokenizer("([{}]) Mary,John.")["input_ids"])
    assert toks == [V.BOS, "(", "[", "{", "}", "]", ")", "Mary", ",", "John", "."]


def test_unknown_words_map_to_unk_in_the_tokenizer_but_fail_in_token_ids(saved_tokenizer) -> None:
    ids = saved_tokenizer("Mary zzzqx")["input_ids"]
    assert ids[-1] == saved_tokenizer.unk_token_id
    with pytest.raises(KeyError, match="zzzqx"):
        token_ids(saved_tokenizer.get_vocab(), ["zzzqx"])
