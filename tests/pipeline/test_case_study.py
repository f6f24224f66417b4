"""`atlas case-study`'s core (service/case_study.py: case_study) at a small size against the real services: the
four task corpora and the error-only IOI corpus go over REST to the command's own API and worker, which computes
Gemma 3 270M's graphs into Neo4j; every graph is stored once with complete rows, and what the command reports
(position shares by role, the IO-position check, the features carrying the target, the scores) equals what is
recomputed here from the stored graphs by a dense solve, and on the error-only graphs equals the engine's own
position shares on the loaded model."""

from __future__ import annotations

import json

import pytest

from tests.pipeline.checks import assert_each_graph_once, assert_stored_rows_complete, stored_position_shares

pytestmark = pytest.mark.slow

SIZES = {"ioi": 4, "induction": 2, "brackets": 2, "facts": 2}


def test_case_study_core_end_to_end(settings, neo4j_driver, gemma, unique_id, tmp_path):
    import torch

    from service.case_study import CaseStudyConfig, case_study, task_prompts, write_outputs
    from workers.dictionaries.gemma.slice import ensure_gemma_slice
    from workers.dictionaries.modules import DictionarySet
    from workers.engine.evaluation import position_shares
    from workers.engine.linearise import Linearised
    from workers.engine.targets import logit_diff

    model, tok = gemma
    slice_dir = ensure_gemma_slice(model=model, tokenizer=tok)
    lines: list[str] = []
    config = CaseStudyConfig(sizes=dict(SIZES), dictionaries=slice_dir, model_id=f"{unique_id}-gemma",
                             job_timeout_s=900)
    res = case_study(settings, lines.append, config, tokenizer=tok)
    prompts = task_prompts(tok, SIZES, config.seed)
    assert set(res["tasks"]) == {*SIZES, "ioi-error-only"}
    assert res["dictionary_set"]["n_dictionaries"] == 6 and res["dictionaries"] == str(slice_dir)

    error_only = Linearised(model, DictionarySet({}))
    for name, s in res["tasks"].items():
        task = "ioi" if name == "ioi-error-only" else name
        ps = prompts[task]
        assert s["n_graphs"] == s["n_prompts"] == SIZES[task], name
        assert_each_graph_once(neo4j_driver, s["corpus_id"])
        best_roles: dict[str, int] = {}
        hits = 0
        for row in s["prompts"]:
            p = ps[row["index"]]
            assert row["text"] == p.text and row["complete"] is True
            assert_stored_rows_complete(neo4j_driver, row["graph_id"])
            shares, bias = stored_position_shares(neo4j_driver, row["graph_id"])
            # leaves carry the whole target
            assert sum(shares.values()) + bias == pytest.approx(row["value"], rel=1e-4, abs=1e-4)
            cands = {q: v for q, v in shares.items() if q != len(p.input_ids) - 1 and v > 0}
            best = max(cands, key=cands.__getitem__)
            assert row["best"] == best, (name, p.text, shares)
            by_role: dict[str, float] = {}
            for q, v in shares.items():
                by_role[p.role_of(q)] = by_role.get(p.role_of(q), 0.0) + v
            assert row["role_shares"] == pytest.approx(by_role, rel=1e-4, abs=1e-4)
            best_roles[p.role_of(best)] = best_roles.get(p.role_of(best), 0) + 1
            hits += best in p.roles.get("IO", ())
            if name == "ioi-error-only":  # the stored error-only graph = the engine's error-only shares
                ids = torch.tensor(p.input_ids)
                ref = position_shares(error_only, ids, logit_diff(error_only, error_only.trace(ids, fold_first=True),
                                                                  p.answer_id, p.distractor_id))
                assert ref.best == best
                assert shares == pytest.approx(ref.shares, rel=1e-3, abs=1e-3 * max(1.0, abs(ref.value)))
        n = s["n_graphs"]
        assert s["best_role_fraction"] == pytest.approx({r: c / n for r, c in best_roles.items()})
        if task == "ioi":
            assert s["io_position_check"]["fraction"] == pytest.approx(hits / n)
        for key in ("replacement", "completeness"):
            st = s["scores"][key]
            assert st["n"] == n and 0.0 <= st["min"] <= st["max"] <= 1.0, (name, key, st)
        assert "accuracy" in s
        if name == "ioi-error-only":
            assert s["features"] == [] and all(r["n_features"] == 0 for r in s["prompts"])
        else:
            assert s["features"] and all(f["url"].startswith(f"{config.viewer}/ui/#/feature/") for f in s["features"])
            layers = {f["fkey"].split("/")[1].split(".")[0] for f in s["features"]}
            assert layers <= {"L2", "L4", "L6"}
    paths = write_outputs(res, tmp_path)
    written = json.loads((tmp_path / "case-study.json").read_text())
    assert written["tasks"]["ioi"]["io_position_check"]["n"] == SIZES["ioi"]
    assert all(p.exists() and 0 < p.stat().st_size < 200_000 for p in paths)
    assert {p.name for p in paths} >= {"ioi-positions.png", "ioi-position-check.png", "scores.png"}
