"""Small random GPT-2 and Llama models with random dictionaries: every identity test runs on both."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from workers.dictionaries.crosslayer.module import CLTConfig, CLTDictionarySet, CrossLayerTranscoder, clt_of
from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet
from workers.engine.linearise import Linearised

torch.set_num_threads(1)


def random_dictionary(
    layer: int, site: str, d_model: int, d_dict: int, gen: torch.Generator, skip: bool = False,
    activation: str = "relu", target_active: float = 10.0,
) -> Dictionary:
    """Random dictionary whose encoder bias leaves about ``target_active`` features active per token
    (for inputs of roughly unit scale per coordinate)."""
    kind = "sae" if site == "attn" else "transcoder"
    cfg = DictionaryConfig(kind=kind, site=site, layer=layer, d_in=d_model, d_out=d_model, d_dict=d_dict,
                           activation=activation, skip=skip)
    d = Dictionary(cfg)
    with torch.no_grad():
        d.W_enc.copy_(torch.randn(d_dict, d_model, generator=gen) / d_model**0.5)
        d.W_dec.copy_(torch.randn(d_dict, d_model, generator=gen) / d_model**0.5)
        d.b_dec.copy_(0.1 * torch.randn(d_model, generator=gen))
        # pre ~ N(b, |x|^2/d); pick b so that P(pre > 0) ≈ target_active / d_dict
        q = torch.tensor(1.0 - target_active / d_dict)
        z = torch.special.ndtri(q)
        d.b_enc.copy_(-z * torch.ones(d_dict) + 0.05 * torch.randn(d_dict, generator=gen))
        if activation == "jumprelu":
            d.threshold.copy_(0.05 * torch.rand(d_dict, generator=gen))
        if skip:
            d.W_skip.copy_(0.1 * torch.randn(d_model, d_model, generator=gen) / d_model**0.5)
    return d


def random_clt(n_layer: int, d_model: int, d_dict: int, gen: torch.Generator, activation: str = "relu",
               input_site: str = "mlp_in") -> CrossLayerTranscoder:
    """Random cross-layer transcoder (``calibrate`` sets its encoder biases)."""
    cfg = CLTConfig(n_layers=n_layer, d_model=d_model, d_dict=d_dict, activation=activation,  # type: ignore[arg-type]
                    input_site=input_site)  # type: ignore[arg-type]
    clt = CrossLayerTranscoder(cfg)
    with torch.no_grad():
        clt.W_enc.copy_(torch.randn(n_layer, d_dict, d_model, generator=gen) / d_model**0.5)
        for i in range(n_layer):
            clt.W_dec[i].copy_(torch.randn(d_dict, n_layer - i, d_model, generator=gen) / d_model**0.5)
        clt.b_dec.copy_(0.1 * torch.randn(n_layer, d_model, generator=gen))
        if activation == "jumprelu":
            clt.threshold.copy_(0.05 * torch.rand(n_layer, d_dict, generator=gen))
    return clt


def calibrate(lin: Linearised, ids: torch.Tensor, target_active: float = 10.0) -> None:
    """Shift each dictionary's encoder bias so that about ``target_active`` features fire per token on
    ``ids`` (random models have site inputs of arbitrary scale); a CLT's per source layer."""
    encoders = [((layer, site), d.W_enc, d.b_enc) for (layer, site), d in lin.dictionaries]
    clt = clt_of(lin.dictionaries)
    if clt is not None:
        encoders += [((layer, "mlp"), clt.W_enc[layer], clt.b_enc[layer]) for layer in range(clt.n_layers)]
    for key, W_enc, b_enc in sorted(encoders, key=lambda e: (e[0][0], e[0][1] == "mlp")):
        tr = lin.trace(ids)  # again after each change: later sites' inputs depend on earlier features
        x = tr.sites[key].x
        with torch.no_grad():
            pre = x @ W_enc.T  # [pos, d_dict]
            k = int(target_active)
            # bias that puts the k-th largest pre-activation of an average token at 0
            kth = pre.topk(k + 1, dim=-1).values[:, -1].mean()
            b_enc.copy_(-kth + 0.01 * torch.randn(b_enc.shape, generator=torch.Generator().manual_seed(key[0])))


def make_gpt2(n_layer: int = 3, d: int = 64, vocab: int = 97, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=d, n_layer=n_layer, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
    m = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so freezing them is actually tested
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(0.2 * torch.randn_like(mod.weight))
                mod.bias.add_(0.1 * torch.randn_like(mod.bias))
    return m


def make_llama(n_layer: int = 3, d: int = 64, vocab: int = 97, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layer,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attention_bias=True, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return m


def make_gemma3(n_layer: int = 3, d: int = 64, vocab: int = 97, seed: int = 0):
    """Gemma 3 features the engine must handle: (1 + w) RMSNorms, QK-norm, post-norms, scaled embeddings,
    sliding-window layers, a final logit softcap. A larger init keeps the random model well conditioned
    (at 0.02 its MLP outputs are tiny and post-norm scales of ~400 amplify float rounding)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layer,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                           sliding_window=4, layer_types=["sliding_attention"] * (n_layer - 1) + ["full_attention"],
                           final_logit_softcapping=30.0, query_pre_attn_scalar=16, initializer_range=0.3)
    m = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return m


def make_dicts(model, n_layer: int, d: int, d_dict: int = 128, sites=("attn", "mlp"), seed: int = 1,
               skip: bool = True, activation: str = "relu") -> DictionarySet:
    gen = torch.Generator().manual_seed(seed)
    dd = {}
    for layer in range(n_layer):
        for site in sites:
            dd[(layer, site)] = random_dictionary(layer, site, d, d_dict, gen, skip=skip and site == "mlp",
                                                  activation=activation)
    return DictionarySet(dd)


def make_clt_dicts(n_layer: int, d: int, d_dict: int = 128, seed: int = 1, activation: str = "relu",
                   input_site: str = "mlp_in") -> CLTDictionarySet:
    """Attention SAEs on every layer and one cross-layer transcoder in place of every MLP."""
    gen = torch.Generator().manual_seed(seed)
    attn = {(layer, "attn"): random_dictionary(layer, "attn", d, d_dict, gen) for layer in range(n_layer)}
    return CLTDictionarySet(attn, clt=random_clt(n_layer, d, d_dict, gen, activation, input_site))


PROMPTS = [
    torch.tensor([5, 17, 42, 8, 5, 17, 42, 3, 91, 11]),
    torch.tensor([1, 2, 3, 4, 5, 6, 7]),
    torch.tensor([60, 13, 13, 77, 0, 45, 22, 60, 13, 50, 2, 9]),
]


MAKERS = {"gpt2": make_gpt2, "llama": make_llama, "gemma3": make_gemma3}


def lazily_loaded(lin: Linearised, where) -> Linearised:
    """``lin`` with its dictionary set written in the native format and loaded back lazily (memory-mapped)."""
    from workers.dictionaries.formats import load_dictionary_set, save_dictionary_set

    save_dictionary_set(lin.dictionaries, where)
    return Linearised(lin.model, load_dictionary_set(where, lazy=True))


# every identity test runs on per-layer transcoders and on cross-layer transcoders: "+clt" reads the MLP
# input, "+clt-resid" the residual before the pre-MLP norm (hook_resid_mid, circuit-tracer's default); and on
# GPT-2 with its dictionaries memory-mapped ("+lazy": load_dictionary_set(lazy=True))
CLT_SITES = {"clt": "mlp_in", "clt-resid": "resid_mid"}


@pytest.fixture(scope="module",
                params=[*MAKERS, *(f"{a}+{c}" for c in CLT_SITES for a in MAKERS), "gpt2+lazy", "gpt2+clt+lazy"])
def lin(request, tmp_path_factory) -> Linearised:
    n_layer, d = 3, 64
    arch, *variants = request.param.split("+")
    model = MAKERS[arch](n_layer, d)
    clt = next((CLT_SITES[v] for v in variants if v in CLT_SITES), None)
    dicts = make_clt_dicts(n_layer, d, input_site=clt) if clt else make_dicts(model, n_layer, d)
    lin = Linearised(model, dicts)
    calibrate(lin, PROMPTS[0])
    return lazily_loaded(lin, tmp_path_factory.mktemp("lazy")) if "lazy" in variants else lin
