"""The zoo's training pieces: loss weights on unpredictable tokens, attention-hint targets and loss,
and what a hinted training run leaves behind."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from workers.zoo import vocab as V
from workers.zoo.corpus import CorpusSpec, induction_example, train_examples
from workers.zoo.tokenizer import build_tokenizer, token_ids
from workers.zoo.training import (
    INDUCTION_HEAD,
    PREVIOUS_TOKEN_HEAD,
    EncodedExample,
    ModelSpec,
    collate,
    encode_examples,
    hint_loss,
    induction_keys,
    make_model,
    train_model,
)


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


def test_collate_zeroes_the_noise_targets_and_weights_the_answer() -> None:
    e = EncodedExample(ids=[1, 10, 11, 12, 10, 11, 2], answer_index=5, noise_targets=4, induction_keys=None)
    short = EncodedExample(ids=[1, 7, 8, 2], answer_index=None)
    batch = collate([e, short], answer_weight=5.0)
    assert batch.weights[0].tolist() == [0, 0, 0, 0, 5.0, 1.0, 0]
    assert batch.weights[1].tolist() == [1.0, 1.0, 1.0, 0, 0, 0, 0]
    assert batch.targets[1].tolist() == [7, 8, 2, -100, -100, -100, -100]
    assert (batch.induction_keys == -1).all()


def _attentions(batch, prev_mass: float, induction_mass: float) -> list[torch.Tensor]:
    """Causal attention patterns [batch, heads, seq, seq] for two layers with the hinted heads putting
    the given mass on their intended keys and the rest spread evenly over the other visible keys."""
    b, s = batch.ids.shape
    out = []
    for layer in range(2):
        pattern = torch.zeros(b, 2, s, s)
        for r in range(b):
            for q in range(s):
                pattern[r, :, q, : q + 1] = 1.0 / (q + 1)
                is_prev = layer == PREVIOUS_TOKEN_HEAD[0]
                want = q - 1 if is_prev else int(batch.induction_keys[r, q])
                mass = prev_mass if is_prev else induction_mass
                if want >= 0 and q > 0:
                    row = torch.full((q + 1,), (1 - mass) / q)
                    row[want] = mass
                    head = PREVIOUS_TOKEN_HEAD[1] if is_prev else INDUCTION_HEAD[1]
                    pattern[r, head, q, : q + 1] = row
        out.append(pattern)
    return out


def test_hint_loss_is_near_zero_on_exact_patterns_and_grows_as_they_blur() -> None:
    ids = [1, 10, 11, 12, 10, 11, 2]
    keys = induction_keys(ids, {10, 11, 12})
    batch = collate([EncodedExample(ids, 5, 0, keys)], answer_weight=1.0)
    exact = hint_loss(_attentions(batch, 1.0, 1.0), batch).item()
    assert abs(exact) < 1e-4
    blurred = hint_loss(_attentions(batch, 0.5, 0.5), batch).item()
    assert blurred == pytest.approx(-2 * torch.log(torch.tensor(0.5 + 1e-6)).item(), rel=1e-4)
    only_prev = hint_loss(_attentions(batch, 1.0, 0.5), batch).item()
    assert exact < only_prev < blurred


def test_hints_need_an_induction_layer() -> None:
    with pytest.raises(ValueError, match="at least 2 layers"):
        ModelSpec(name="one", arch="gpt2", n_layer=1, attention_hint_weight=1.0)


def test_embedding_init_and_the_llama_padding_row(tokenizer) -> None:
    n = len(tokenizer.get_vocab())
    gpt2 = make_model(ModelSpec(name="g", arch="gpt2", n_layer=2, embedding_std=0.1), n)
    assert gpt2.get_input_embeddings().weight.std().item() == pytest.approx(0.1, rel=0.05)
    llama = make_model(ModelSpec(name="l", arch="llama", n_layer=2, embedding_std=0.1), n)
    emb = llama.get_input_embeddings()
    assert emb.padding_idx == 0 and not emb.weight[0].any()
    assert emb.weight[1:].std().item() == pytest.approx(0.1, rel=0.05)


def _previous_token_mass(model, batch) -> float:
    """Mean attention of the previous-token head on the previous token, over real query positions."""
    implementation = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # the only implementation that returns the patterns
    try:
        with torch.no_grad():
            att = model(input_ids=batch.ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = implementation
    layer, head = PREVIOUS_TOKEN_HEAD
    prev = torch.diagonal(att[layer][:, head, 1:, :-1], dim1=1, dim2=2)
    return prev[batch.targets[:, 1:] != -100].mean().item()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hinted_training_shapes_the_hinted_head_and_restores_the_attention_implementation(
    tokenizer, arch
) -> None:
    """The same short run with and without hints: with them, layer 0's head 0 puts far more of its
    attention on the previous token, and the model comes back with the attention implementation it
    was created with."""
    examples = train_examples(CorpusSpec(n_train=2000))
    batch = collate(encode_examples(examples[-32:], tokenizer), answer_weight=1.0)
    spec = ModelSpec(name="h", arch=arch, n_layer=2, d_model=32, n_head=2, steps=150, batch_size=16)
    created = make_model(spec, len(tokenizer.get_vocab())).config._attn_implementation
    plain = train_model(spec, examples, tokenizer).model
    hinted = train_model(replace(spec, attention_hint_weight=1.0), examples, tokenizer).model
    assert hinted.config._attn_implementation == created
    plain_mass, hinted_mass = _previous_token_mass(plain, batch), _previous_token_mass(hinted, batch)
    assert hinted_mass > plain_mass + 0.15, (plain_mass, hinted_mass)
