"""Weight-level global circuits: prompt-independent virtual weights along the residual path (DESIGN.md §2).

A source feature s (any dictionary: an attention SAE or a transcoder, both decode into the residual stream)
writes ``W_dec[s]`` [d_model]; a transcoder feature t at a later MLP reads the residual through the pre-MLP
norm ``y = m · P(x) ⊙ γ_l + β_l`` (m = 1/σ the frozen per-token multiplier, γ_l the gain, P the centring of a
LayerNorm or the identity of an RMSNorm). With the norm frozen, t's pre-activation ``W_enc[t]·y + b_enc[t]``
has the gradient ``m · P(γ_l ⊙ W_enc[t])`` in the residual (P is symmetric, so the centring applies to the
gain-weighted row), and

    VW[s, t] = W_dec[s] · P(γ_l ⊙ W_enc[t]) / σ̄_l

is the direct, residual-only effect per unit activation of s on t's pre-activation, with the norm's scale
held at its dataset average σ̄_l. The attribution edge of a prompt at position p is exactly
``a_s · W_dec[s] · P(γ_l ⊙ W_enc[t]) · m_p``, so ``a_s · VW[s, t]`` equals it when the norm's scale at p is
the average one (tests/query/test_virtual_weight_scale.py checks this on a model).

The average (:func:`average_norm_scales`): σ̄_l = 1 / mean(m_p) over every token of a corpus' prompts
(the BOS position excluded when the engine folds it, as it has no feature nodes). Averaging the multiplier
rather than σ makes ``VW · a_s`` the token-average of the per-token edges per unit activation, the quantity
the corpus aggregates estimate (``norm_w``, service/query/global_circuits.py). The per-token multipliers are
measured by the engine's own norm freezing (``workers.engine.norms.fit_norm``), so they are the scales
the attribution graphs use.

A cross-layer transcoder feature of source layer ℓ is one source whose ``W_dec[s]`` is the sum of its writes
to the MLP outputs of layers ℓ..l−1 (those before the target's MLP at layer l), and one target like a
transcoder feature when its encoder reads the MLP input. A CLT reading ``resid_mid`` (the residual before the
pre-MLP norm) has no norm on its read path: ``VW[s, t] = W_dec[s] · W_enc[t]``, no gain, centring or scale,
and ``a_s · VW[s, t]`` is the residual-only edge at every position.

Attention OV paths are not included (they depend on the prompt's attention pattern). Sources must come
earlier in the residual stream: attn of layer l and MLP of layer l' < l feed the MLP of layer l.
Only the ``top_k`` incoming weights by |VW| are kept per target feature; they are stored as
``(:Feature)-[:VW {w, dictionary_set}]->(:Feature)`` (replacing earlier VW edges of the dictionary set), and
their provenance (corpus, σ̄_l per layer, tokens averaged, top_k) as one
``(:VirtualWeights {dictionary_set, ...})`` node per dictionary set.
Limitation: post-block norms (Gemma's sandwich norms on the attention/MLP output) are not modelled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from neo4j import Driver
from torch import nn

from workers.dictionaries.crosslayer.module import SourceLayer, clt_of
from workers.dictionaries.modules import DictionarySet
from workers.vocabulary.ids import feature_key

WRITE_BATCH = 20_000


@dataclass(frozen=True)
class VirtualWeight:
    source: str  # fkey
    target: str  # fkey
    w: float


def _feeds(src: tuple[int, str], dst: tuple[int, str]) -> bool:
    """Whether the dictionary at ``src`` writes the residual stream before the MLP at ``dst`` reads it."""
    (ls, ss), (lt, st) = src, dst
    if st != "mlp":
        return False
    return ls < lt or (ls == lt and ss == "attn")


def _decoder_into(src, layer: int) -> torch.Tensor:  # noqa: ANN001 - Dictionary | SourceLayer
    """What a source feature writes into the residual stream before layer ``layer``'s MLP reads it
    [d_s, d_model]: its decoder, or for a CLT feature of source layer ℓ the sum of its writes to the MLP
    outputs of layers ℓ..layer−1."""
    if isinstance(src, SourceLayer):
        return sum(src.clt.decoder(src.layer, m) for m in range(src.layer, layer))  # type: ignore[return-value]
    return src.W_dec


def virtual_weights(dset: DictionarySet, dictionary_set_id: str, *, top_k: int = 16,
                    gamma: dict[int, torch.Tensor] | None = None, scale: dict[int, float] | None = None,
                    centre: bool = False) -> list[VirtualWeight]:
    """Top-``k`` incoming virtual weights of every transcoder feature (module docstring).

    ``gamma[l]`` [d_model] is the pre-MLP norm gain of layer l (1 when absent), ``scale[l]`` its fixed scale
    σ̄_l (the denominator; 1 when absent), ``centre`` whether the norm subtracts the mean (LayerNorm).
    Result ordered by target fkey, then |w| desc, then source fkey.
    """
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    members = list(dset)
    clt = clt_of(dset)
    if clt is not None:  # a CLT's source layers are the MLP sites' dictionaries (one fkey per feature)
        members = sorted(members + [((i, "mlp"), SourceLayer(clt, i)) for i in range(clt.n_layers)],
                         key=lambda m: (m[0][0], m[0][1] == "mlp"))
    out: list[VirtualWeight] = []
    for (lt, st), tgt in members:
        if st != "mlp":
            continue
        reader = tgt.W_enc.detach().float()  # [d_t, d_model]
        reads_resid = isinstance(tgt, SourceLayer) and tgt.clt.cfg.input_site == "resid_mid"
        if not reads_resid:  # read through the frozen pre-MLP norm
            if gamma is not None and lt in gamma:
                reader = reader * gamma[lt].detach().float()[None, :]
            if centre:  # after the gain: the gradient of W·(γ ⊙ (x − mean x)) is P(γ ⊙ W)
                reader = reader - reader.mean(dim=1, keepdim=True)
            reader = reader / float((scale or {}).get(lt, 1.0))
        sources = [(key, d) for key, d in members if _feeds(key, (lt, st))]
        if not sources:
            continue
        d_t = reader.shape[0]
        best_w = torch.empty(d_t, 0)
        best_src = torch.empty(d_t, 0, dtype=torch.long)  # global index into the concatenated sources
        names: list[tuple[str, int]] = []  # per global index offset: (dictionary name, offset)
        offset = 0
        for (ls, ss), src in sources:
            vw = (_decoder_into(src, lt).detach().float() @ reader.T).T  # [d_t, d_s]
            idx = torch.arange(offset, offset + vw.shape[1]).expand(d_t, -1)
            cand_w = torch.cat([best_w, vw], dim=1)
            cand_i = torch.cat([best_src, idx], dim=1)
            k = min(top_k, cand_w.shape[1])
            # Sort by |w| desc, ties by lower global index (stable sort on a prior index sort).
            order = torch.sort(cand_i, dim=1, stable=True).indices
            cand_w, cand_i = cand_w.gather(1, order), cand_i.gather(1, order)
            top = torch.sort(cand_w.abs(), dim=1, descending=True, stable=True).indices[:, :k]
            best_w, best_src = cand_w.gather(1, top), cand_i.gather(1, top)
            names.append((f"L{ls}.{ss}", offset))
            offset += vw.shape[1]
        tname = f"L{lt}.{st}"
        for t in range(d_t):
            tkey = feature_key(dictionary_set_id, tname, t)
            for w, g in zip(best_w[t].tolist(), best_src[t].tolist(), strict=True):
                dname, off = max((n for n in names if n[1] <= g), key=lambda n: n[1])
                out.append(VirtualWeight(feature_key(dictionary_set_id, dname, g - off), tkey, w))
    out.sort(key=lambda v: (v.target, -abs(v.w), v.source))
    return out


def pre_mlp_norms(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    """The norm in front of each block's MLP: (module name, module) per layer, for the usual layouts."""
    from workers.models.sites import decoder_blocks

    names = {id(m): n for n, m in model.named_modules()}
    out: dict[int, tuple[str, nn.Module]] = {}
    for i, block in enumerate(decoder_blocks(model)):
        # Gemma's post_attention_layernorm is a post-norm of the attention output; its pre-MLP norm is
        # pre_feedforward_layernorm, hence the order.
        for attr in ("ln_2", "pre_feedforward_layernorm", "post_attention_layernorm"):
            norm = getattr(block, attr, None)
            if norm is not None:
                out[i] = (names[id(norm)], norm)
                break
    return out


def norm_gain(norm: nn.Module) -> torch.Tensor | None:
    """A norm's gain γ [d_model] (None when it has no weight)."""
    if getattr(norm, "weight", None) is None:
        return None
    g = norm.weight.detach().float()
    return 1.0 + g if "gemma" in type(norm).__name__.lower() else g  # Gemma's RMSNorm multiplies by (1 + weight)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the unembedding (GPT-2's ln_f, Llama/Gemma's model.norm), or None.

    Kept here, beside ``norm_gain``, not in workers/models/sites.py: that file is part of the zoo's build key,
    and a lookup that training never uses must not force a zoo rebuild."""
    for path in ("transformer.ln_f", "model.norm", "model.decoder.final_layer_norm", "gpt_neox.final_layer_norm",
                 "norm"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def norm_gains(model: nn.Module) -> tuple[dict[int, torch.Tensor], bool]:
    """The pre-MLP norm gain γ_l of every block [d_model], and whether the norm centres (LayerNorm)."""
    gains: dict[int, torch.Tensor] = {}
    centre = False
    for i, (_, norm) in pre_mlp_norms(model).items():
        g = norm_gain(norm)
        if g is None:
            continue
        gains[i] = g
        centre = centre or isinstance(norm, nn.LayerNorm)
    return gains, centre


@dataclass(frozen=True)
class NormScale:
    """The dataset-average scale of one layer's pre-MLP norm (module docstring)."""

    sigma: float  # σ̄ = 1 / mean_p(m_p): what virtual weights divide by
    mean_multiplier: float  # mean_p(m_p), m_p = 1/σ_p the frozen multiplier of token p
    min_sigma: float
    max_sigma: float
    n_tokens: int

    def to_dict(self) -> dict:
        return {"sigma": self.sigma, "mean_multiplier": self.mean_multiplier, "min_sigma": self.min_sigma,
                "max_sigma": self.max_sigma, "n_tokens": self.n_tokens}


def average_norm_scales(model: nn.Module, prompts: Iterable[Sequence[int]], *, bos_token_id: int | None = None,
                        max_tokens: int | None = None) -> dict[int, NormScale]:
    """σ̄_l of every layer's pre-MLP norm over the tokens of ``prompts`` (token ids; module docstring).

    Each prompt runs once through the unchanged model; a hook fits the norm's frozen per-token multiplier
    exactly as the engine freezes it. A prompt starting with ``bos_token_id`` contributes its other
    positions only (the engine folds BOS). ``max_tokens`` stops after that many tokens (whole prompts).
    """
    from workers.engine.norms import fit_norm

    norms = pre_mlp_norms(model)
    if not norms:
        raise ValueError(f"cannot find the pre-MLP norms of {type(model).__name__}")
    mult: dict[int, list[torch.Tensor]] = {i: [] for i in norms}
    skip_first = [False]

    def hook(layer: int, name: str):  # noqa: ANN202 - a torch forward hook
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            m = fit_norm(module, inputs[0], output, name).scale.detach().double().reshape(-1)  # [pos]
            mult[layer].append(m[1:] if skip_first[0] else m)
        return record

    handles = [norm.register_forward_hook(hook(i, name)) for i, (name, norm) in norms.items()]
    n_tokens = 0
    try:
        with torch.no_grad():
            for ids in prompts:
                ids = [int(t) for t in ids]
                if not ids:
                    continue
                skip_first[0] = bos_token_id is not None and ids[0] == bos_token_id
                if skip_first[0] and len(ids) == 1:
                    continue
                model(torch.tensor([ids], dtype=torch.long))
                n_tokens += len(ids) - int(skip_first[0])
                if max_tokens is not None and n_tokens >= max_tokens:
                    break
    finally:
        for h in handles:
            h.remove()
    if n_tokens == 0:
        raise ValueError("no tokens to average the norm scale over (empty prompts, or only BOS)")
    out: dict[int, NormScale] = {}
    for layer, parts in mult.items():
        m = torch.cat(parts)
        mean = float(m.mean())
        out[layer] = NormScale(sigma=1.0 / mean, mean_multiplier=mean, min_sigma=float(1.0 / m.max()),
                               max_sigma=float(1.0 / m.min()), n_tokens=int(m.numel()))
    return out


def store_virtual_weights(driver: Driver, dictionary_set_id: str, weights: list[VirtualWeight], *,
                          provenance: dict | None = None, database: str | None = None) -> int:
    """Replace the dictionary set's VW edges with ``weights`` (features MERGEd on first use), and its
    ``(:VirtualWeights)`` node with ``provenance`` (JSON-able; how they were computed)."""
    with driver.session(database=database) as session:
        while session.run(
            "MATCH ()-[v:VW {dictionary_set: $d}]->() WITH v LIMIT 20000 DELETE v RETURN count(*) AS n",
            d=dictionary_set_id,
        ).single(strict=True)["n"]:
            pass
        keys = sorted({v.source for v in weights} | {v.target for v in weights})
        for i in range(0, len(keys), WRITE_BATCH):
            part = keys[i:i + WRITE_BATCH]
            session.run(
                "UNWIND $keys AS k MERGE (f:Feature {fkey: k}) ON CREATE SET f.dictionary_set = $d, "
                "f.dictionary = split(split(k, '/')[1], '#')[0], f.index = toInteger(split(k, '#')[1])",
                keys=part, d=dictionary_set_id,
            ).consume()
        for i in range(0, len(weights), WRITE_BATCH):
            part = weights[i:i + WRITE_BATCH]
            session.run(
                "UNWIND range(0, size($s) - 1) AS i MATCH (a:Feature {fkey: $s[i]}) MATCH (b:Feature {fkey: $t[i]}) "
                "CREATE (a)-[:VW {w: $w[i], dictionary_set: $d}]->(b)",
                s=[v.source for v in part], t=[v.target for v in part], w=[v.w for v in part], d=dictionary_set_id,
            ).consume()
        session.run(
            "MERGE (p:VirtualWeights {dictionary_set: $d}) SET p.n_edges = $n, p.provenance = $prov, "
            "p.computed_at = $now", d=dictionary_set_id, n=len(weights), prov=json.dumps(provenance or {}, sort_keys=True),
            now=time.time(),
        ).consume()
    return len(weights)


def corpus_prompt_tokens(driver: Driver, corpus_id: str, *, database: str | None = None) -> tuple[dict, list[list[int]]]:
    """(the Corpus node's model and dictionary set ids, its prompts' token ids in submission order)."""
    rows, _, _ = driver.execute_query(
        "MATCH (c:Corpus {corpus_id: $c}) OPTIONAL MATCH (p:Prompt {corpus_id: $c}) WITH c, p ORDER BY p.index "
        "RETURN c.model_id AS model_id, c.dictionary_set_id AS dictionary_set_id, collect(p.tokens) AS tokens",
        c=corpus_id, database_=database, routing_="r")
    if not rows:
        raise LookupError(f"no corpus {corpus_id!r}: the dataset-average norm scale is measured on a submitted "
                          "corpus' prompts")
    r = rows[0]
    return {"model_id": r["model_id"], "dictionary_set_id": r["dictionary_set_id"]}, [list(t) for t in r["tokens"]]


def compute_and_store_for_registered(driver: Driver, dictionary_set_id: str, corpus_id: str, *, top_k: int = 16,
                                     max_tokens: int = 100_000, database: str | None = None) -> dict:
    """The worker job: load a registered dictionary set and its model, measure the pre-MLP norm scales on
    ``corpus_id``'s prompts (at most ``max_tokens``), compute, and store the VW edges with their provenance."""
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set
    from workers.pipeline import registry

    dset_reg = registry.get_dictionary_set(driver, dictionary_set_id, database)
    corpus, prompts = corpus_prompt_tokens(driver, corpus_id, database=database)
    if corpus["model_id"] != dset_reg.model_id:
        raise ValueError(f"corpus {corpus_id!r} was submitted for model {corpus['model_id']!r}, but dictionary set "
                         f"{dictionary_set_id!r} belongs to model {dset_reg.model_id!r}; choose a corpus of that model")
    model_reg = registry.get_model(driver, dset_reg.model_id, database)
    if model_reg.format == "gguf":
        from pathlib import Path

        from workers.models.gguf import load_gguf_model

        model, _ = load_gguf_model(Path(model_reg.path))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_reg.path, dtype=torch.float32, local_files_only=True)
    model.eval()
    dset = load_dictionary_set(dset_reg.path, model)
    bos = getattr(model.config, "bos_token_id", None)
    scales = average_norm_scales(model, prompts, bos_token_id=bos, max_tokens=max_tokens)
    gains, centre = norm_gains(model)
    weights = virtual_weights(dset, dictionary_set_id, top_k=top_k, gamma=gains, centre=centre,
                              scale={layer: s.sigma for layer, s in scales.items()})
    provenance = {
        "corpus_id": corpus_id, "model_id": dset_reg.model_id, "top_k": top_k, "centred": centre,
        "norm_scale": "dataset average: sigma = 1 / mean over the corpus' tokens of the frozen pre-MLP norm "
                      "multiplier (workers/analysis/virtual_weights.py)",
        "norm_scales": {str(layer): s.to_dict() for layer, s in sorted(scales.items())},
        "n_prompts": len(prompts), "max_tokens": max_tokens, "bos_excluded": bos is not None,
    }
    n = store_virtual_weights(driver, dictionary_set_id, weights, provenance=provenance, database=database)
    return {"dictionary_set_id": dictionary_set_id, "n_edges": n, **provenance}

