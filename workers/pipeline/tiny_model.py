"""A tiny randomly initialised GPT-2 (the zoo's word tokenizer) with random dictionaries, written to disk:
what the pipeline's tests, and its benchmark without a built zoo, register and run. Not a trained model:
its circuits mean nothing, but every stage of the pipeline runs on it in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_model(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """(HF model dir, native dictionary set dir): GPT-2 with 2 layers, d=32, the zoo's word tokenizer, and
    an SAE per attention output + a transcoder per MLP whose encoder biases make a few features fire."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workers.dictionaries.formats import save_dictionary_set
    from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet
    from workers.vocabulary.tensors import SITES
    from workers.zoo.tokenizer import build_tokenizer, save_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    model_dir, dict_dir = out / "model", out / "dictionaries"
    model.save_pretrained(model_dir)
    save_tokenizer(tok, model_dir)
    gen = torch.Generator().manual_seed(seed)
    dicts = {}
    for layer in range(2):
        for site in SITES:
            dc = DictionaryConfig(kind="sae" if site == "attn" else "transcoder", site=site, layer=layer, d_in=32,
                                  d_out=32, d_dict=48, activation="relu")
            d = Dictionary(dc).init_weights_(gen)
            with torch.no_grad():
                d.W_enc.copy_(torch.randn(48, 32, generator=gen))
                d.b_enc.copy_(-2.0 * torch.ones(48))  # about 5% of features fire on unit-scale inputs
            dicts[(layer, site)] = d
    save_dictionary_set(DictionarySet(dicts, model_name="tiny-gpt2"), dict_dir)
    return model_dir, dict_dir
