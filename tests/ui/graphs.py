"""A real attribution graph for the viewer tests: the engine on a tiny random GPT-2 with random transcoders and
SAEs, the zoo's word-level tokenizer for readable tokens, circuit-tracer pruning, stored by the project's
writer (``from_engine.graph_to_record`` + ``write_graph``). Small enough to build in a few seconds on 1 thread."""

from __future__ import annotations

import uuid

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet
from workers.engine import Linearised, attribute, prune
from workers.store.from_engine import graph_to_record
from workers.store.records import GraphRecord
from workers.zoo.tokenizer import build_tokenizer

PROMPT = "Mary and John went to the store , John gave a drink to"


def _random_dictionary(layer: int, site: str, d_model: int, d_dict: int, gen: torch.Generator) -> Dictionary:
    kind = "sae" if site == "attn" else "transcoder"
    d = Dictionary(DictionaryConfig(kind=kind, site=site, layer=layer, d_in=d_model, d_out=d_model, d_dict=d_dict))
    with torch.no_grad():
        d.W_enc.copy_(torch.randn(d_dict, d_model, generator=gen) / d_model**0.5)
        d.W_dec.copy_(torch.randn(d_dict, d_model, generator=gen) / d_model**0.5)
        # A negative encoder bias leaves a handful of features active per token (inputs of unit scale).
        d.b_enc.copy_(-0.6 + 0.05 * torch.randn(d_dict, generator=gen))
    return d


def build_record(n_layer: int = 3, d_model: int = 48, d_dict: int = 128, seed: int = 0,
                 clt: str | None = None) -> GraphRecord:
    """``clt``: an input site ("mlp_in" / "resid_mid"): attention SAEs plus one random cross-layer transcoder
    (tests/engine/conftest.py's, encoder biases calibrated on the prompt) instead of per-layer transcoders."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=d_model, n_layer=n_layer, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    if clt is not None:
        from tests.engine.conftest import calibrate, random_clt
        from workers.dictionaries.crosslayer.module import CLTDictionarySet

        attn = {(layer, "attn"): _random_dictionary(layer, "attn", d_model, d_dict, gen) for layer in range(n_layer)}
        lin = Linearised(model, CLTDictionarySet(attn, model_name="ui-test-gpt2", clt=random_clt(
            n_layer, d_model, d_dict, gen, input_site=clt)))
        calibrate(lin, torch.tensor(tok(PROMPT)["input_ids"]), target_active=4.0)
    else:
        dicts = {(layer, site): _random_dictionary(layer, site, d_model, d_dict, gen)
                 for layer in range(n_layer) for site in ("attn", "mlp")}
        lin = Linearised(model, DictionarySet(dicts, model_name="ui-test-gpt2"))
    graph = attribute(lin, PROMPT, ["top"], tokenizer=tok)
    tag = uuid.uuid4().hex[:10]
    return graph_to_record(graph, graph_id=f"ui-{tag}", prompt_id=f"ui-p-{tag}", corpus_id=f"ui-c-{tag}",
                           model="ui-test-gpt2", dictionary_set=f"ui-d-{tag}", pruned=prune(graph, node_threshold=0.995, edge_threshold=0.999))
