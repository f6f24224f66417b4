"""The demo's pipeline steps (real uvicorn over HTTP, real worker, Neo4j) on the tiny model with prompts of
the three zoo task families, and on Gemma 3 270M with the suite's slice of dictionaries and IOI prompts
(``atlas demo --model gemma3-270m``): the job completes and a circuit and the corpus aggregates are read back
from Neo4j."""

from __future__ import annotations

import random

import pytest

from service.demo import (
    DEMO_MODELS,
    GEMMA_DEMO_PROMPTS,
    DemoContext,
    DemoError,
    demo_prompts,
    demo_steps,
    step_circuit,
    step_corpus,
    step_gemma,
)


def test_demo_pipeline_steps_end_to_end(settings, neo4j_driver, tiny_model, unique_id):
    from workers.zoo.corpus import bracket_example, induction_example, ioi_example
    from workers.zoo.vocab import induction_symbols

    rng = random.Random(0)
    examples = [bracket_example(rng) for _ in range(3)] + [induction_example(rng, induction_symbols()) for _ in range(3)]
    examples += [ioi_example(rng) for _ in range(3)]
    prompts = demo_prompts(examples)
    assert len(prompts) == 9 and sum(p["targets"][0].startswith("diff:") for p in prompts) == 3
    lines: list[str] = []
    ctx = DemoContext(settings=settings, echo=lines.append)
    model_dir, dict_dir = tiny_model
    ctx.results.update(model_dir=model_dir, dictionaries_dir=dict_dir, model_id=f"{unique_id}-m", prompts=prompts,
                       corpus_settings={"max_features": 40}, job_timeout_s=180)
    for step in (step_corpus, step_circuit):
        step(ctx)
    job = ctx.results["job"]
    assert job["state"] == "complete" and job["done"] == 9
    circuit = ctx.results["circuit"]
    assert circuit["targets"].startswith('["diff:')  # the IOI graph is the one shown
    assert circuit["into_target"] and circuit["features"]
    assert any("strongest direct effects" in line for line in lines)
    # The job is final only once its aggregates are folded: the demo's aggregate lines are never empty.
    assert circuit["aggregates"] and all(a["n"] >= 1 for a in circuit["aggregates"])
    assert any(line.strip().startswith("sum_w") for line in lines)


def test_demo_models_select_only_the_ready_step():
    zoo, gemma = demo_steps("zoo"), demo_steps("gemma3-270m")
    assert [s.name for s in zoo] != [s.name for s in gemma] and len(zoo) == len(gemma)
    differ = [(a.run, b.run) for a, b in zip(zoo, gemma, strict=True) if a.run is not b.run]
    assert differ == [(DEMO_MODELS["zoo"].run, step_gemma)]
    with pytest.raises(DemoError, match="gemma3-270m"):
        demo_steps("gpt2")


@pytest.mark.slow
def test_demo_gemma_steps_end_to_end(settings, neo4j_driver, gemma, unique_id):
    """The Gemma mode's own steps against the real services: the slice (cached by the suite; ``gemma`` trains it
    if it is not) and the GGUF file registered over HTTP by the demo's uvicorn, IOI prompts computed by a real
    worker, and the IO − S circuit of one prompt read back from Neo4j."""
    from workers.dictionaries.gemma.slice import ensure_gemma_slice

    model, tok = gemma
    slice_dir = ensure_gemma_slice(model=model, tokenizer=tok)  # step_gemma then finds it cached
    lines: list[str] = []
    ctx = DemoContext(settings=settings, echo=lines.append)
    step_gemma(ctx)
    assert ctx.results["dictionaries_dir"] == slice_dir and ctx.results["model_dir"].suffix == ".gguf"
    assert any("full set" in line and "slice" in line for line in lines)
    prompts = ctx.results["prompts"]
    assert len(prompts) == GEMMA_DEMO_PROMPTS
    ctx.results["model_id"] = f"{unique_id}-gemma"  # fresh ids: the corpus is this test's alone
    ctx.results["job_timeout_s"] = 900
    lines.clear()
    for step in (step_corpus, step_circuit):
        step(ctx)
    job = ctx.results["job"]
    assert (job["state"], job["done"]) == ("complete", GEMMA_DEMO_PROMPTS), job
    c = ctx.results["circuit"]
    # The circuit shown is the first prompt's (all are IOI), its first target logit(IO) − logit(S), whose value is
    # Gemma's own: its final (normed) hidden state read out through the unembedding rows of IO and S.
    import torch

    io_id, s_id = prompts[0]["targets"][0]["diff"]
    assert c["prompt"] == prompts[0]["text"] and c["target"]["label"].endswith(f"t{io_id}-t{s_id}")
    with torch.no_grad():
        final = model(torch.tensor([tok(c["prompt"]).input_ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        w_u = model.get_output_embeddings().weight
        reference = float(final @ (w_u[io_id] - w_u[s_id]))
    assert abs(c["target"]["value"] - reference) < 1e-3 * max(1.0, abs(reference)), (c["target"], reference)
    assert c["into_target"] and all(e["target"] == c["target"]["node_id"] for e in c["into_target"])
    assert c["features"] and {f["node"].split(":")[1].split(".")[0] for f in c["features"]} <= {"L2", "L4", "L6"}
    assert any(f"= {c['target']['value']:+.3f}" in line for line in lines)
