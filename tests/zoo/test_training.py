"""The zoo's training pieces: loss weights on unpredictable tokens, attention-hint targets and loss,
and what a hinted training run leaves behind."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from workers.zoo import vocab as V
from workers.zoo.corpus import CorpusSpec, bracket_example, induction_example, ioi_example, train_examples
from workers.zoo.tokenizer import build_tokenizer, token_ids
from workers.zoo.training import (
    HINT_HEADS,
    EncodedExample,
    ModelSpec,
    bracket_keys,
    collate,
    encode_examples,
    hint_loss,
    hinted_attention,
    induction_keys,
    make_model,
    name_mover_keys,
    previous_token_keys,
    train_model,
)

ALL_HINTS = tuple(HINT_HEADS)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_induction_noise_targets_cover_exactly_the_unpredictable_tokens(tokenizer) -> None:
    """The noise prefix ends at the first copied token; every target after it is what copying predicts
    (a token that followed an earlier occurrence of the current one), and the answer is the only one."""
    vocab = tokenizer.get_vocab()
    rng = random.Random(5)
    for _ in range(300):
        ex = induction_example(rng, V.induction_symbols())
        ids = token_ids(vocab, ex.training_tokens())
        answer_index = len(ex.prompt_tokens)
        for t in range(ex.noise_targets, answer_index):  # target ids[t + 1], the answer included
            followers = {ids[j + 1] for j in range(t) if ids[j] == ids[t]}
            assert ids[t + 1] in followers, (ex.prompt, t)
        assert {ids[j + 1] for j in range(answer_index - 1) if ids[j] == ids[answer_index - 1]} == {
            ids[answer_index]
        }
        copy_length = int(ex.template.removeprefix("copy"))
        assert ex.noise_targets == len(ex.prompt_tokens) - copy_length  # index of the first copied token


def test_other_tasks_have_no_noise_targets() -> None:
    for ex in train_examples(CorpusSpec(n_train=400)):
        assert (ex.noise_targets > 0) == (ex.task == "induction"), ex


def test_induction_keys_point_after_the_single_earlier_occurrence() -> None:
    a, b, c, x = 10, 11, 12, 99
    symbols = {a, b, c}
    #        0  1  2  3  4  5  6  7
    ids = [1, a, b, c, a, b, x, a]
    keys = induction_keys(ids, symbols)
    assert keys == [-1, -1, -1, -1, 2, 3, -1, -1]  # position 7: `a` occurred twice before, ambiguous
    assert induction_keys([1, a, a], symbols) == [-1, -1, -1]  # j + 1 == t: nothing to look back at
    assert induction_keys([1, x, 5, x], symbols) == [-1, -1, -1, -1]  # not an induction symbol


def test_previous_token_keys_cover_the_positions_with_a_target() -> None:
    assert previous_token_keys(5) == [-1, 0, 1, 2, -1]  # BOS has no previous token, the last no target


def test_bracket_keys_point_at_the_innermost_open_bracket() -> None:
    tokens = [V.BOS, "(", "[", "]", "{", "}", ")", V.EOS]
    assert bracket_keys(tokens) == [-1, 1, 2, 1, 4, 1, -1, -1]
    rng = random.Random(3)
    for _ in range(300):  # at the prompt's end the innermost open bracket is the answer's source
        ex = bracket_example(rng)
        assert bracket_keys(ex.training_tokens())[len(ex.prompt_tokens) - 1] == ex.source_positions[0], ex


def test_name_mover_keys_point_from_the_last_prompt_token_at_the_indirect_object() -> None:
    rng = random.Random(4)
    for _ in range(100):
        ex = ioi_example(rng)
        n = len(ex.training_tokens())
        keys = name_mover_keys(ex, n)
        last = len(ex.prompt_tokens) - 1
        assert [k for k in keys if k >= 0] == [keys[last]]
        assert ex.prompt_tokens[keys[last]] == ex.answer != ex.s_name
    assert name_mover_keys(bracket_example(rng), 6) == [-1] * 6


def test_encode_examples_computes_only_the_asked_hints(tokenizer) -> None:
    examples = train_examples(CorpusSpec(n_train=50))
    assert all(e.hint_keys == {} for e in encode_examples(examples, tokenizer))
    encoded = encode_examples(examples, tokenizer, ("bracket", "name_mover"))
    assert all(e.hint_keys.keys() == {"bracket", "name_mover"} for e in encoded)
    for ex, e in zip(examples, encoded, strict=True):
        assert any(k >= 0 for k in e.hint_keys["bracket"]) == (ex.task == "brackets")
        assert any(k >= 0 for k in e.hint_keys["name_mover"]) == (ex.task == "ioi")


def test_collate_zeroes_the_noise_targets_and_weights_the_answer() -> None:
    e = EncodedExample(ids=[1, 10, 11, 12, 10, 11, 2], answer_index=5, noise_targets=4)
    short = EncodedExample(ids=[1, 7, 8, 2], answer_index=None)
    batch = collate([e, short], answer_weight=5.0)
    assert batch.weights[0].tolist() == [0, 0, 0, 0, 5.0, 1.0, 0]
    assert batch.weights[1].tolist() == [1.0, 1.0, 1.0, 0, 0, 0, 0]
    assert batch.targets[1].tolist() == [7, 8, 2, -100, -100, -100, -100]
    assert batch.hint_keys == {}
    hinted = EncodedExample(
        ids=[1, 7, 8, 2], answer_index=None, hint_keys={"previous_token": previous_token_keys(4)}
    )
    with pytest.raises(ValueError, match="same hints"):
        collate([hinted, short], answer_weight=1.0)
    padded = collate([hinted, replace(hinted, ids=[1, 7, 2], hint_keys={"previous_token": [-1, 0, -1]})], 1.0)
    assert padded.hint_keys["previous_token"].tolist() == [[-1, 0, 1, -1], [-1, 0, -1, -1]]


def _attentions(batch, mass: dict[str, float]) -> list[torch.Tensor]:
    """Causal attention patterns [batch, heads, seq, seq] for every hinted layer, each hinted head
    putting ``mass[hint]`` on its intended key and the rest spread evenly over the other visible keys;
    every other row is uniform."""
    b, s = batch.ids.shape
    n_layers = 1 + max(layer for heads in HINT_HEADS.values() for layer, _ in heads)
    uniform = torch.tril(torch.ones(s, s)) / torch.arange(1, s + 1)[:, None]
    n_heads = 1 + max(head for heads in HINT_HEADS.values() for _, head in heads)
    out = [uniform.expand(b, n_heads, s, s).clone() for _ in range(n_layers)]
    for hint, keys in batch.hint_keys.items():
        for layer, head in HINT_HEADS[hint]:
            for r in range(b):
                for q in range(s):
                    want = int(keys[r, q])
                    if want < 0:
                        continue
                    assert q > 0  # no hint asks BOS (the only key it sees) to look elsewhere
                    row = torch.full((q + 1,), (1 - mass[hint]) / q)
                    row[want] = mass[hint]
                    out[layer][r, head, q, : q + 1] = row
    return out


def test_hint_loss_is_near_zero_on_exact_patterns_and_grows_as_they_blur(tokenizer) -> None:
    examples = [ex for ex in train_examples(CorpusSpec(n_train=60)) if ex.task != "filler"][:12]
    batch = collate(encode_examples(examples, tokenizer, ALL_HINTS), answer_weight=1.0)
    assert all((batch.hint_keys[h] >= 0).any() for h in ALL_HINTS)
    exact = hint_loss(_attentions(batch, dict.fromkeys(ALL_HINTS, 1.0)), batch).item()
    assert abs(exact) < 1e-4
    blurred = hint_loss(_attentions(batch, dict.fromkeys(ALL_HINTS, 0.5)), batch).item()
    assert blurred == pytest.approx(-len(ALL_HINTS) * torch.log(torch.tensor(0.5 + 1e-6)).item(), rel=1e-4)
    only_prev = hint_loss(_attentions(batch, {**dict.fromkeys(ALL_HINTS, 0.5), "previous_token": 1.0}), batch)
    assert exact < only_prev.item() < blurred
    on_key = hinted_attention(_attentions(batch, dict.fromkeys(ALL_HINTS, 0.25)), batch, "bracket")
    assert on_key.numel() == int((batch.hint_keys["bracket"] >= 0).sum()) * len(HINT_HEADS["bracket"])
    assert torch.allclose(on_key, torch.full_like(on_key, 0.25))


def test_hints_must_name_a_head_the_model_has() -> None:
    with pytest.raises(ValueError, match="shapes layer 1 head 0"):
        ModelSpec(name="one", arch="gpt2", n_layer=1, attention_hints=("previous_token", "induction"))
    with pytest.raises(ValueError, match="the .bracket. hint shapes layer 2 head 0"):
        ModelSpec(name="two", arch="gpt2", n_layer=2, attention_hints=ALL_HINTS)
    with pytest.raises(ValueError, match="unknown attention hint 'copy'"):
        ModelSpec(name="x", arch="gpt2", n_layer=4, attention_hints=("copy",))
    ModelSpec(name="four", arch="gpt2", n_layer=4, attention_hints=ALL_HINTS)


def test_embedding_init_and_the_llama_padding_row(tokenizer) -> None:
    n = len(tokenizer.get_vocab())
    gpt2 = make_model(ModelSpec(name="g", arch="gpt2", n_layer=2, embedding_std=0.1), n)
    assert gpt2.get_input_embeddings().weight.std().item() == pytest.approx(0.1, rel=0.05)
    llama = make_model(ModelSpec(name="l", arch="llama", n_layer=2, embedding_std=0.1), n)
    emb = llama.get_input_embeddings()
    assert emb.padding_idx == 0 and not emb.weight[0].any()
    assert emb.weight[1:].std().item() == pytest.approx(0.1, rel=0.05)


def _hinted_mass(model, batch, hint: str) -> float:
    """Mean attention of ``hint``'s head on its intended keys."""
    implementation = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # the only implementation that returns the patterns
    try:
        with torch.no_grad():
            att = model(input_ids=batch.ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = implementation
    return hinted_attention(att, batch, hint).mean().item()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hinted_training_shapes_the_hinted_head_and_restores_the_attention_implementation(
    tokenizer, arch
) -> None:
    """The same short run with and without hints: with them, layer 0's head 0 puts far more of its
    attention on the previous token, and the model comes back with the attention implementation it
    was created with."""
    examples = train_examples(CorpusSpec(n_train=2000))
    hints = ("previous_token", "induction")
    batch = collate(encode_examples(examples[-32:], tokenizer, hints), answer_weight=1.0)
    spec = ModelSpec(name="h", arch=arch, n_layer=2, d_model=32, n_head=2, steps=150, batch_size=16)
    created = make_model(spec, len(tokenizer.get_vocab())).config._attn_implementation
    plain = train_model(spec, examples, tokenizer).model
    hinted = train_model(replace(spec, attention_hints=hints), examples, tokenizer).model
    assert hinted.config._attn_implementation == created
    plain_mass = _hinted_mass(plain, batch, "previous_token")
    hinted_mass = _hinted_mass(hinted, batch, "previous_token")
    assert hinted_mass > plain_mass + 0.15, (plain_mass, hinted_mass)
