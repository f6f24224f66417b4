"""The demo's pipeline steps (real uvicorn over HTTP, real worker, Neo4j) on the tiny model with prompts of
the three zoo task families: the job completes and a circuit and the corpus aggregates are read back from
Neo4j."""

from __future__ import annotations

import random

from service.demo import DemoContext, demo_prompts, step_circuit, step_corpus


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
                       job_timeout_s=180)
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
