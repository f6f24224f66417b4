"""The zoo's word-level tokenizer, in Hugging Face format so ``AutoTokenizer.from_pretrained(dir)`` loads
it offline like any hub tokenizer.

Pre-tokenisation splits on whitespace and isolates every punctuation character, so "(" "[" "," "." are
tokens of their own even when written without spaces. The post-processor prepends ``<bos>`` to every
encoded text: position 0 is always BOS, matching ``Example.prompt_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from workers.zoo import vocab as V


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (default: the zoo vocabulary; PAD=0, BOS=1, EOS=2, UNK=3)."""
    words = words if words is not None else V.all_words()
    if len(set(words)) != len(words):
        raise ValueError("vocabulary has duplicate words")
    table = {w: i for i, w in enumerate(words)}
    for tok in V.SPECIAL_TOKENS:
        if tok not in table:
            raise ValueError(f"vocabulary lacks the special token {tok!r}")
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token=V.UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{V.BOS} $A", pair=f"{V.BOS} $A $B", special_tokens=[(V.BOS, table[V.BOS])]
    )
    # Word-level tokens re-join with single spaces: decode(encode(t)) == t for the corpus' texts.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([V.PAD, V.BOS, V.EOS, V.UNK])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=V.BOS,
        eos_token=V.EOS,
        pad_token=V.PAD,
        unk_token=V.UNK,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))


def token_ids(vocab: Mapping[str, int], tokens: Sequence[str]) -> list[int]:
    """Ids of already-split tokens (the corpus yields them split) under ``vocab`` (``tokenizer.get_vocab()``);
    unknown words are an error, not UNK, because the corpus and the vocabulary must agree."""
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise KeyError(f"tokens not in the zoo vocabulary: {missing[:5]}; add them to workers/zoo/vocab.py")
    return [vocab[t] for t in tokens]
