"""Logit effects of cross-layer transcoder features (workers/analysis/logit_effects.py) against the engine's
edges: with attention SAEs on every layer (no attention path) and a CLT in place of every MLP (no MLP path),
a CLT feature's only route to a logit at its own position is the residual stream, through every MLP output it
writes to, so its edge to each top-logit target is a_f · m · effect[t] with one m (the final norm's frozen
multiplier at that position) shared by every feature there, whatever its source layer."""

from __future__ import annotations

import torch

from tests.engine.conftest import PROMPTS, calibrate, make_clt_dicts, make_gpt2
from workers.analysis.logit_effects import decoder_direction, model_logit_effects
from workers.engine.attribution import attribute
from workers.engine.linearise import Linearised


def test_clt_feature_logit_effects_are_its_direct_edges_from_every_source_layer():
    torch.set_num_threads(1)
    model = make_gpt2(3, 64)
    lin = Linearised(model, make_clt_dicts(3, 64))
    calibrate(lin, PROMPTS[0])
    g = attribute(lin, PROMPTS[0])
    last = int(PROMPTS[0].numel()) - 1
    logits = [i for i, k in enumerate(g.kinds) if k == "logit"]
    tokens = [int(g.node_ids[i].rsplit(":t", 1)[1]) for i in logits]
    assert len(logits) >= 2
    dense = g.dense()
    per_unit, layers = [], set()
    for i, k in enumerate(g.kinds):
        if k != "feat" or g.site[i] != "mlp" or int(g.pos[i]) != last:
            continue
        direction = decoder_direction(lin.dictionaries, f"L{int(g.layer[i])}.mlp", int(g.feature[i]))
        eff = model_logit_effects(lin.model, lin.W_U, direction).double()[tokens]
        w = dense[logits, i].double()
        c = float((w @ eff) / (eff @ eff))
        assert (w - c * eff).abs().max() <= 1e-4 * w.abs().max(), g.node_ids[i]
        per_unit.append(c / float(g.activation[i]))
        layers.add(int(g.layer[i]))
    assert layers == {0, 1, 2}, layers  # features of every source layer, not only the last
    assert max(per_unit) - min(per_unit) <= 1e-4 * max(abs(m) for m in per_unit)  # one final-norm multiplier
