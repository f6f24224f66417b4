"""Logit effects of a dictionary feature: the tokens its decoder direction promotes and suppresses most through
the direct path (residual stream -> final norm with its scale frozen -> unembedding), prompt-independent.

A feature writes ``d = W_dec[f]`` [d_model] into the residual stream. Through the final norm
``y = m · P(x) ⊙ γ + β`` (m = 1/σ the frozen per-token multiplier, γ its gain, P the centring of a LayerNorm or
the identity of an RMSNorm) and the de-meaned unembedding row ``w̃_t = W_U[t] − mean_v W_U[v]`` (the logit targets
of the engine, workers/engine/targets.py), its effect on token t's logit per unit activation is
``m · w̃_t · (γ ⊙ P(d))``. This module reports

    effect[t] = w̃_t · (γ ⊙ P(d))                                              [vocab]

the effect at m = 1: every token's effect scales by the same m, so the ranking is the same at any token. For a
feature of the last block at the last position (no later layer, no later attention), the attribution edge to
the logit target t is exactly ``a_f · m_p · effect[t]`` (tests/analysis checks this against engine graphs).
Later blocks' paths (MLPs, attention) are not included: this is the direct path only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from workers.analysis.virtual_weights import final_norm, norm_gain
from workers.dictionaries.crosslayer.module import clt_of

_DICTIONARY = re.compile(r"L(\d+)\.(\w+)")


class NoLogitEffects(LookupError):
    """The feature's dictionary or model cannot give logit effects (the message says why)."""


def decoder_direction(dictionaries, dictionary: str, index: int) -> torch.Tensor:  # noqa: ANN001 - DictionarySet
    """``W_dec[index]`` [d_model] of the dictionary named ``L<layer>.<site>`` (workers/store/from_engine.py); for a
    cross-layer transcoder's source layer, the sum of the feature's writes to every layer."""
    m = _DICTIONARY.fullmatch(dictionary)
    d = dictionaries.get(int(m.group(1)), m.group(2)) if m else None
    clt = clt_of(dictionaries)
    if d is None and clt is not None and m and m.group(2) == "mlp" and 0 <= int(m.group(1)) < clt.n_layers:
        # a CLT feature writes to the MLP outputs of layers ℓ..L−1: all of it reaches the logits directly
        layer = int(m.group(1))
        if not 0 <= index < clt.cfg.d_dict:
            raise NoLogitEffects(f"dictionary {dictionary!r} has {clt.cfg.d_dict} features, not {index + 1}")
        return clt.W_dec[layer][index].sum(0).detach().float()
    if d is None:
        raise NoLogitEffects(f"the dictionary set has no dictionary {dictionary!r}")
    if d.W_dec.dim() != 2:
        raise NoLogitEffects(f"dictionary {dictionary!r} has a {d.W_dec.dim()}-D decoder; logit effects need one "
                             "direction per feature")
    if not 0 <= index < d.W_dec.shape[0]:
        raise NoLogitEffects(f"dictionary {dictionary!r} has {d.W_dec.shape[0]} features, not {index + 1}")
    return d.W_dec[index].detach().float()


def logit_effects(W_U: torch.Tensor, direction: torch.Tensor, gain: torch.Tensor | None, centre: bool) -> torch.Tensor:
    """effect [vocab] = (W_U − its mean row) · (γ ⊙ P(direction)); W_U [vocab, d_model], direction [d_model]."""
    v = direction - direction.mean() if centre else direction
    if gain is not None:
        v = gain * v
    eff = W_U.detach().float() @ v  # [vocab]
    return eff - eff.mean()  # = (W_U − mean row) · v


def model_logit_effects(model: nn.Module, W_U: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``logit_effects`` with the model's own final norm (none: identity)."""
    norm = final_norm(model)
    return logit_effects(W_U, direction, norm_gain(norm) if norm is not None else None,
                         isinstance(norm, nn.LayerNorm))


@dataclass(frozen=True)
class TokenEffect:
    token_id: int
    token: str | None
    effect: float


def top_effects(effects: torch.Tensor, k: int, decode=None) -> tuple[list[TokenEffect], list[TokenEffect]]:  # noqa: ANN001
    """The k most promoted (largest effect first) and k most suppressed (most negative first) tokens."""
    k = min(k, effects.numel())
    up = torch.topk(effects, k)
    down = torch.topk(-effects, k)

    def rows(ids: torch.Tensor) -> list[TokenEffect]:
        return [TokenEffect(int(i), decode(int(i)) if decode else None, float(effects[i])) for i in ids]

    return rows(up.indices), rows(down.indices)


def registered_feature_logit_effects(driver, cache, fkey: str, k: int = 10, *,  # noqa: ANN001 - Driver, ModelCache
                                     database: str | None = None) -> dict:
    """The top ``k`` promoted and suppressed tokens of a stored feature, with its registered model and dictionary
    set loaded through ``cache`` (workers.pipeline.compute.ModelCache). Raises LookupError for an unknown
    feature, NoLogitEffects when its dictionary set or model is not registered."""
    from workers.pipeline import registry

    records, _, _ = driver.execute_query(
        "MATCH (f:Feature {fkey: $f}) RETURN f.dictionary_set AS dset, f.dictionary AS dictionary, f.index AS index",
        f=fkey, database_=database, routing_="r")
    if not records:
        raise LookupError(f"no feature {fkey!r}")
    r = records[0]
    try:
        dset = registry.get_dictionary_set(driver, r["dset"], database)
        model = registry.get_model(driver, dset.model_id, database)
    except registry.RegistryError as exc:
        raise NoLogitEffects(f"logit effects need the feature's dictionary set and model registered: {exc}") from None
    loaded = cache.get(model, dset)
    direction = decoder_direction(loaded.lin.dictionaries, r["dictionary"], int(r["index"]))
    effects = model_logit_effects(loaded.lin.model, loaded.lin.W_U, direction)
    tok = loaded.tokenizer
    up, down = top_effects(effects, k, (lambda t: tok.decode([t])) if tok is not None else None)
    return {"fkey": fkey, "model_id": model.model_id, "dictionary_set": dset.dictionary_set_id,
            "promoted": [e.__dict__ for e in up], "suppressed": [e.__dict__ for e in down]}
