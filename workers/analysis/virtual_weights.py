"""Weight-level global circuits: prompt-independent virtual weights along the residual path (DESIGN.md §2).

A source feature s (any dictionary: an attention SAE or a transcoder, both decode into the residual stream)
writes ``W_dec[s]`` [d_model]; a transcoder feature t at a later MLP reads the residual through the pre-MLP
norm, whose scale is held at a fixed value σ_l (its dataset average; 1.0 unless given) and whose gain is γ_l:

    VW[s, t] = W_dec[s] · (γ_l ⊙ W_enc[t]) / σ_l          (LayerNorm: W_enc row centred first, since the
                                                           norm subtracts the mean: ∂/∂x (x − mean x) = P)

This is the direct, residual-only effect per unit activation of s on t's pre-activation (attention OV
paths are not included: they depend on the prompt's attention pattern). Sources must come earlier in the
residual stream: attn of layer l and MLP of layer l' < l feed the MLP of layer l.
Only the ``top_k`` incoming weights by |VW| are kept per target feature; they are stored as
``(:Feature)-[:VW {w, dictionary_set}]->(:Feature)`` (replacing earlier VW edges of the dictionary set).
Limitation: post-block norms (Gemma's sandwich norms on the attention/MLP output) are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from neo4j import Driver
from torch import nn

from workers.dictionaries.modules import DictionarySet
from workers.store.records import feature_key

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


def virtual_weights(dset: DictionarySet, dictionary_set_id: str, *, top_k: int = 16,
                    gamma: dict[int, torch.Tensor] | None = None, scale: dict[int, float] | None = None,
                    centre: bool = False) -> list[VirtualWeight]:
    """Top-``k`` incoming virtual weights of every transcoder feature (module docstring).

    ``gamma[l]`` [d_model] is the pre-MLP norm gain of layer l (1 when absent), ``scale[l]`` its fixed scale.
    Result ordered by target fkey, then |w| desc, then source fkey.
    """
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    members = list(dset)
    out: list[VirtualWeight] = []
    for (lt, st), tgt in members:
        if st != "mlp":
            continue
        reader = tgt.W_enc.detach().float()  # [d_t, d_model]
        if centre:
            reader = reader - reader.mean(dim=1, keepdim=True)
        if gamma is not None and lt in gamma:
            reader = reader * gamma[lt].detach().float()[None, :]
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
            vw = (src.W_dec.detach().float() @ reader.T).T  # [d_t, d_s]
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


def norm_gains(model: nn.Module) -> tuple[dict[int, torch.Tensor], bool]:
    """The pre-MLP norm gain γ_l of every block [d_model], and whether the norm centres (LayerNorm)."""
    from workers.models.sites import decoder_blocks

    gains: dict[int, torch.Tensor] = {}
    centre = False
    for i, block in enumerate(decoder_blocks(model)):
        norm = None
        for name in ("ln_2", "pre_feedforward_layernorm", "post_attention_layernorm"):
            norm = getattr(block, name, None)
            if norm is not None:
                break
        if norm is None or getattr(norm, "weight", None) is None:
            continue
        g = norm.weight.detach().float()
        if "gemma" in type(norm).__name__.lower():
            g = 1.0 + g  # Gemma's RMSNorm multiplies by (1 + weight)
        gains[i] = g
        centre = centre or isinstance(norm, nn.LayerNorm)
    return gains, centre


def store_virtual_weights(driver: Driver, dictionary_set_id: str, weights: list[VirtualWeight], *,
                          database: str | None = None) -> int:
    """Replace the dictionary set's VW edges with ``weights`` (features MERGEd on first use)."""
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
    return len(weights)


def compute_and_store_for_registered(driver: Driver, dictionary_set_id: str, *, top_k: int = 16,
                                     database: str | None = None) -> dict:
    """The worker job: load a registered dictionary set and its model's norm gains, compute, store."""
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set
    from workers.pipeline import registry

    dset_reg = registry.get_dictionary_set(driver, dictionary_set_id, database)
    model_reg = registry.get_model(driver, dset_reg.model_id, database)
    if model_reg.format == "gguf":
        from pathlib import Path

        from workers.models.gguf import load_gguf_model

        model, _ = load_gguf_model(Path(model_reg.path))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_reg.path, dtype=torch.float32, local_files_only=True)
    dset = load_dictionary_set(dset_reg.path, model)
    gains, centre = norm_gains(model)
    weights = virtual_weights(dset, dictionary_set_id, top_k=top_k, gamma=gains, centre=centre)
    n = store_virtual_weights(driver, dictionary_set_id, weights, database=database)
    return {"dictionary_set_id": dictionary_set_id, "top_k": top_k, "n_edges": n, "centred": centre,
            "scale": "1.0 (dataset-average norm scale not measured)"}
