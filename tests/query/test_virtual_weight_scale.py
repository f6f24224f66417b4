"""Virtual weights with the dataset-average norm scale (workers/analysis/virtual_weights.py).

The identity that makes the scale right: a feature s feeding a transcoder feature t through the residual
stream with only the pre-MLP norm in between has the attribution edge ``a_s · W_dec[s] · P(γ ⊙ W_enc[t]) · m_p``
(m_p the norm's frozen multiplier at the position), so ``a_s · VW[s, t]`` equals the engine's edge exactly
when the norm's scale at that position is the averaged one. Checked on random GPT-2 (LayerNorm) and Llama
(RMSNorm) models with every site spliced (attention SAEs block the attention paths, skip-free transcoders
the MLP paths), then end to end through the API: the job measures the scale on a corpus and reports it.
"""

from __future__ import annotations

import time

import pytest
import torch

from tests.engine.conftest import CLT_SITES, calibrate, make_clt_dicts, make_dicts, make_gpt2, make_llama
from workers.analysis.virtual_weights import average_norm_scales, norm_gains, pre_mlp_norms, virtual_weights
from workers.dictionaries.crosslayer.module import clt_of
from workers.engine.attribution import attribute
from workers.engine.linearise import Linearised

torch.set_num_threads(1)

PROMPT = [5, 17, 42, 8, 5, 17, 42, 3, 91, 11]
N_LAYER, D, D_DICT = 2, 32, 64


def _residual_edges(g, dset_id: str) -> list[tuple[str, str, int, float, float]]:  # noqa: ANN001
    """(source fkey, target fkey, position, a_s, edge) of every feature -> transcoder-feature edge whose only
    route is the residual stream (source written before the target's MLP reads it)."""
    feats = {i: n for i, n in enumerate(g.node_ids) if g.kinds[i] == "feat"}
    out = []
    for t, t_id in feats.items():
        if g.site[t] != "mlp":
            continue
        cols, vals = g.row(t)
        for s, w in zip(cols.tolist(), vals.tolist(), strict=True):
            if s not in feats:
                continue
            ls, lt = int(g.layer[s]), int(g.layer[t])
            if not (ls < lt or (ls == lt and g.site[s] == "attn")):
                continue
            if int(g.pos[s]) != int(g.pos[t]):  # the residual never crosses positions (stored zeros only)
                assert w == 0.0, (feats[s], t_id, w)
                continue
            out.append((f"{dset_id}/L{ls}.{g.site[s]}#{int(g.feature[s])}",
                        f"{dset_id}/L{lt}.mlp#{int(g.feature[t])}", int(g.pos[t]), float(g.activation[s]), w))
    return out


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt2+clt", "llama+clt", "gpt2+clt-resid", "llama+clt-resid"])
def spliced(request):  # noqa: ANN001, ANN201
    arch, _, clt = request.param.partition("+")
    model = {"gpt2": make_gpt2, "llama": make_llama}[arch](N_LAYER + (1 if clt else 0), D)
    # a CLT over three layers, so that a layer-0 feature reaches layer 2 through two writes; "clt-resid"
    # reads the residual before the pre-MLP norm (no norm on the read path: VW·a is the edge at every position)
    dicts = (make_clt_dicts(N_LAYER + 1, D, d_dict=D_DICT, input_site=CLT_SITES[clt]) if clt
             else make_dicts(model, N_LAYER, D, d_dict=D_DICT, skip=False))
    lin = Linearised(model, dicts)
    calibrate(lin, torch.tensor(PROMPT))
    return lin


def test_vw_times_activation_is_the_edge_when_the_scale_is_the_average(spliced):
    lin = spliced
    gains, centre = norm_gains(lin.model)
    assert centre == isinstance(pre_mlp_norms(lin.model)[0][1], torch.nn.LayerNorm)
    clt = clt_of(lin.dictionaries)
    n_sources = sum(d.cfg.d_dict for _, d in lin.dictionaries) + (clt.cfg.d_dict * clt.n_layers if clt else 0)
    g = attribute(lin, PROMPT)
    edges = _residual_edges(g, "d")
    assert len(edges) >= 20 and {e[2] for e in edges} >= {0}

    # 1. A corpus whose average is exactly position 0's scale: the first token alone (causal: position 0 of
    # the prompt computes the same as a one-token prompt).
    at_0 = average_norm_scales(lin.model, [PROMPT[:1]])
    # Far from 1 compared with the tolerance below: a unit scale (the old behaviour) fails the identity.
    assert all(abs(s.sigma - 1.0) > 1e-2 for s in at_0.values()), at_0
    vw0 = {(v.source, v.target): v.w for v in virtual_weights(
        lin.dictionaries, "d", top_k=n_sources, gamma=gains, centre=centre, scale={k: s.sigma for k, s in at_0.items()})}
    checked = 0
    for src, tgt, pos, act, w in edges:
        if pos == 0:
            assert act * vw0[(src, tgt)] == pytest.approx(w, rel=1e-4, abs=1e-6), (src, tgt)
            checked += 1
    assert checked >= 5

    # 2. The prompt as the corpus: sigma is 1 / the mean of the engine's own frozen multipliers, and at every
    # position the edge is a_s · VW scaled by that position's multiplier relative to the average.
    avg = average_norm_scales(lin.model, [PROMPT])
    trace = lin.trace(torch.tensor(PROMPT))
    mult = {layer: trace.norms[name][0].scale.reshape(-1).double() for layer, (name, _) in pre_mlp_norms(lin.model).items()}
    for layer, s in avg.items():
        assert s.n_tokens == len(PROMPT)
        assert s.sigma == pytest.approx(1.0 / float(mult[layer].mean()), rel=1e-6)
        assert s.min_sigma <= s.sigma <= s.max_sigma and s.max_sigma > s.min_sigma
    vw = {(v.source, v.target): v.w for v in virtual_weights(
        lin.dictionaries, "d", top_k=n_sources, gamma=gains, centre=centre, scale={k: s.sigma for k, s in avg.items()})}
    # float32 rounding relative to the graph's scale (a CLT edge sums several writes, which can cancel)
    tol = 1e-6 * max(1.0, max(abs(e[4]) for e in edges))
    for src, tgt, pos, act, w in edges:
        layer = int(tgt.split("/L")[1].split(".")[0])
        ratio = 1.0 if lin.reads_resid_mid else float(mult[layer][pos]) * avg[layer].sigma
        assert act * vw[(src, tgt)] * ratio == pytest.approx(w, rel=1e-4, abs=tol), (src, tgt, pos)


def test_virtual_weight_job_reports_the_measured_scale(neo4j_driver, redis_client, settings, unique_id, tmp_path):
    """POST /global/virtual-weights on a registered model and a corpus of its prompts; the job's stored VW
    edges and GET /global/virtual-weights/provenance carry the scale measured on that corpus."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import create_key, delete_key
    from workers.analysis.jobs import run_analysis
    from workers.pipeline import registry
    from workers.pipeline.jobs import create_job
    from workers.pipeline.tiny_model import build_tiny_model
    from workers.pipeline.validation import PromptSpec, ValidatedCorpus

    db = settings.neo4j_database
    model_dir, dict_dir = build_tiny_model(tmp_path, seed=2)
    model = registry.register_model(neo4j_driver, f"{unique_id}-m", model_dir, db)
    dset = registry.register_dictionary_set(neo4j_driver, f"{unique_id}-d", dict_dir, model.model_id, db)
    from workers.pipeline.compute import load_tokenizer

    tok = load_tokenizer(model)
    texts = ["the cat sat on the mat", "when mary and john went to the store"]
    tokens = [tok(t)["input_ids"] for t in texts]
    corpus = ValidatedCorpus(model_id=model.model_id, dictionary_set_id=dset.dictionary_set_id, name=unique_id,
                             settings={}, prompts=[PromptSpec(text=t) for t in texts], tokens=tokens, duplicates=[])
    job = create_job(neo4j_driver, corpus, db)
    key, plain = create_key(redis_client, f"{unique_id}-w", ("write",))
    try:
        with TestClient(create_app(settings)) as client:
            auth = {"Authorization": f"Bearer {plain}"}
            missing = client.post("/global/virtual-weights", json={"dictionary_set_id": dset.dictionary_set_id},
                                  headers=auth)
            assert missing.status_code == 422 and "corpus_id" in missing.text
            r = client.post("/global/virtual-weights", headers=auth, json={
                "dictionary_set_id": dset.dictionary_set_id, "corpus_id": job.corpus_id, "top_k": 4})
            assert r.status_code == 202, r.text
            assert run_analysis(neo4j_driver, r.json()["analysis_id"], database=db) == "done"
            done = client.get(f"/analyses/{r.json()['analysis_id']}").json()
            prov = client.get("/global/virtual-weights/provenance",
                              params={"dictionary_set_id": dset.dictionary_set_id}).json()
            fkey = f"{dset.dictionary_set_id}/L1.mlp#0"
            rows = client.get("/global/virtual-weights", params={"fkey": fkey}).json()
            assert client.get("/global/virtual-weights/provenance",
                              params={"dictionary_set_id": "nope"}).status_code == 404

        # the reported scale is the one measured independently on the same prompts
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
        want = average_norm_scales(hf, tokens, bos_token_id=hf.config.bos_token_id)
        assert prov["corpus_id"] == job.corpus_id and prov["top_k"] == 4 and prov["n_prompts"] == 2
        assert set(prov["norm_scales"]) == {"0", "1"}
        for layer, s in want.items():
            got = prov["norm_scales"][str(layer)]
            assert got["sigma"] == pytest.approx(s.sigma, rel=1e-9) and got["n_tokens"] == s.n_tokens
        assert done["result"]["norm_scales"] == prov["norm_scales"] and prov["n_edges"] == done["result"]["n_edges"]
        assert prov["computed_at"] <= time.time()
        # the stored edges are the ones computed with that scale
        gains, centre = norm_gains(hf)
        from workers.dictionaries.formats import load_dictionary_set

        expect = [v for v in virtual_weights(load_dictionary_set(dict_dir, hf), dset.dictionary_set_id, top_k=4,
                                             gamma=gains, centre=centre, scale={k: s.sigma for k, s in want.items()})
                  if v.target == fkey]
        assert [r["fkey"] for r in rows] == [v.source for v in expect]
        assert [r["w"] for r in rows] == pytest.approx([v.w for v in expect], rel=1e-5)
    finally:
        neo4j_driver.execute_query(
            "MATCH (n) WHERE (n:Feature AND n.fkey STARTS WITH $p) OR (n:VirtualWeights AND n.dictionary_set = $d) "
            "OR (n:Corpus AND n.corpus_id = $c) OR (n:Prompt AND n.corpus_id = $c) "
            "OR (n:Job AND n.corpus_id = $c) DETACH DELETE n",
            p=f"{dset.dictionary_set_id}/", d=dset.dictionary_set_id, c=job.corpus_id, database_=db)
        delete_key(redis_client, key.key_id)
