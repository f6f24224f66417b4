"""A small IOI corpus on the real Gemma 3 270M through the real pipeline (issue #16): the GGUF model and the
suite's trained slice of dictionaries (workers/dictionaries/gemma/slice.py) registered, eight IOI prompts
(workers/case_studies/ioi.py) submitted over REST with logit(IO) − logit(S) and the top logits as targets, a
real worker subprocess loads Gemma and computes, graphs land in Neo4j once each, and every stored row (targets
and expanded features, stored unpruned under a node budget) sums to its value."""

from __future__ import annotations

import uuid

import pytest

from tests.pipeline.checks import assert_each_graph_once, assert_stored_rows_complete
from tests.pipeline.conftest import wait_for
from tests.pipeline.test_workers import finished, submit

pytestmark = pytest.mark.slow

N_PROMPTS = 8


@pytest.fixture(scope="module")
def gemma_registered(neo4j_driver, settings, gemma) -> tuple[str, str]:  # noqa: ANN001
    """(model_id, dictionary_set_id): the GGUF file and the slice, registered under fresh names."""
    from workers.dictionaries.gemma.slice import ensure_gemma_slice
    from workers.models.gguf import gemma3_270m_path
    from workers.pipeline.registry import register_dictionary_set, register_model

    model, tok = gemma
    slice_dir = ensure_gemma_slice(model=model, tokenizer=tok)
    name = f"t{uuid.uuid4().hex[:12]}-gemma"
    register_model(neo4j_driver, f"{name}-m", gemma3_270m_path(), settings.neo4j_database)
    register_dictionary_set(neo4j_driver, f"{name}-d", slice_dir, f"{name}-m", settings.neo4j_database)
    return f"{name}-m", f"{name}-d"


def test_ioi_corpus_runs_through_the_pipeline(client, neo4j_driver, gemma_registered, gemma, worker_factory):
    from workers.case_studies.ioi import corpus_items, ioi_prompts, single_token_names

    _, tok = gemma
    model_id, dset_id = gemma_registered
    prompts = ioi_prompts(N_PROMPTS, single_token_names(tok))
    items = corpus_items(prompts, tok)
    worker_factory()
    acc = submit(client, model_id, dset_id, items, max_feature_nodes=16, prune=False)
    st = wait_for(lambda: finished(client, acc), 900, "the Gemma IOI corpus to finish", every_s=2)
    assert (st["state"], st["done"], st["total"]) == ("complete", N_PROMPTS, N_PROMPTS), st
    assert_each_graph_once(neo4j_driver, acc["corpus_id"])
    checked = 0
    for i, p in enumerate(prompts):
        gid = f"g-{acc['corpus_id']}-{i}"
        rec = neo4j_driver.execute_query(
            "MATCH (g:Graph {graph_id: $g}) RETURN g.model AS m, g.dictionary_set AS d", g=gid).records
        assert rec, f"no graph for prompt {i}: {p.text!r}"
        checked += assert_stored_rows_complete(neo4j_driver, gid)
        # the stored graph is Gemma's, on this prompt's tokens, with the slice's features
        tokens = neo4j_driver.execute_query(
            "MATCH (n:Emb {graph_id: $g}) RETURN n.pos AS pos, n.token AS tok ORDER BY pos", g=gid).records
        assert "".join(r["tok"] for r in tokens[1:]) == p.text
        layers = {r["l"] for r in neo4j_driver.execute_query(
            "MATCH (n:Feat {graph_id: $g}) RETURN DISTINCT n.layer AS l", g=gid).records}
        assert layers and layers <= {2, 4, 6}
    assert checked >= N_PROMPTS * 17  # the IO − S target, at least one top logit and 16 expanded features each
