"""The `atlas` command line. Subcommands grow with the project; each is a thin shell over library code."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from service.runtime.processes import ServiceError
from workers.settings import Settings, get_settings

app = typer.Typer(help="Circuit Atlas: exact feature-level circuits of transformer LMs, stored in Neo4j.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
services_app = typer.Typer(help="Local Neo4j and Redis started by the project.", no_args_is_help=True)
app.add_typer(services_app, name="services")

from service.keys_cli import keys_app  # noqa: E402 - sub-app defined in its own module

app.add_typer(keys_app, name="keys")

from workers.engine.cli import attribute as attribute_command  # noqa: E402
from workers.zoo.cli import app as zoo_app  # noqa: E402

app.add_typer(zoo_app, name="zoo")

from workers.text_corpus.cli import app as data_app  # noqa: E402

app.add_typer(data_app, name="data")

from workers.dictionaries.gemma.cli import app as gemma_dictionaries_app  # noqa: E402
from workers.dictionaries.gemma.full import GemmaDictionarySpec  # noqa: E402

dictionaries_app = typer.Typer(help="Trained dictionaries (SAEs and transcoders) of real models.", no_args_is_help=True)
dictionaries_app.add_typer(gemma_dictionaries_app, name="gemma")
app.add_typer(dictionaries_app, name="dictionaries")
app.command("attribute", help="Compute one attribution graph and print its circuit.")(attribute_command)

from atlas_client.cli import circuit_command, corpus_app  # noqa: E402 - the client's commands (over HTTP)

app.add_typer(corpus_app, name="corpus")
app.command("circuit", help="Print a stored graph's circuit (JSON or Neuronpedia) from the API.")(circuit_command)


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _settings() -> Settings:
    return get_settings()


@services_app.command("up")
def services_up() -> None:
    """Start Neo4j and Redis (a no-op for those already running); waits until both answer."""
    from service.runtime import services

    try:
        result = services.up(_settings(), _echo)
    except ServiceError as exc:
        raise _fail(exc) from None
    for line in result.lines():
        typer.echo(line)


@services_app.command("down")
def services_down() -> None:
    """Stop the Neo4j and Redis processes this project started (never anything else)."""
    from service.runtime import services

    stopped = services.down(_settings(), _echo)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing (no service of ours was running)"))


@services_app.command("status")
def services_status() -> None:
    """Show whether Neo4j and Redis are running and reachable. Exit code 1 if either is not."""
    from service.runtime import services

    result = services.status(_settings())
    for line in result.lines():
        typer.echo(line)
    if not (result.neo4j.running and result.redis.reachable):
        raise typer.Exit(code=1)


@app.command("migrate")
def migrate_command(
    break_lock: bool = typer.Option(False, "--break-lock", help="Remove a leftover migration lock first."),
    lock_wait_s: float = typer.Option(60.0, help="How long to wait for another runner's lock."),
) -> None:
    """Apply pending migrations/ files in order (a no-op when all are applied)."""
    from service.db.migrations import MigrationError, migrate
    from service.db.migrations import break_lock as remove_lock
    from workers.connections.neo4j import Neo4jPasswordMissing, neo4j_driver

    settings = _settings()
    try:
        with neo4j_driver(settings) as driver:
            if break_lock:
                typer.echo(f"removed {remove_lock(driver, settings.neo4j_database)} lock(s)")
            report = migrate(driver, settings.neo4j_database, lock_wait_s=lock_wait_s)
    except (MigrationError, Neo4jPasswordMissing) as exc:
        raise _fail(exc) from None
    except neo4j_errors() as exc:
        raise _fail(RuntimeError(f"cannot reach Neo4j at {settings.neo4j_uri} ({exc}); run `atlas services up`")) from None
    if report.applied:
        typer.echo(f"applied migrations {report.applied} in {report.seconds:.1f}s")
    else:
        typer.echo(f"nothing to apply ({len(report.already_applied)} migrations already applied)")


def neo4j_errors() -> tuple[type[BaseException], ...]:
    import neo4j

    return (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.AuthError, OSError)


@app.command("api")
def api_command(
    host: str | None = typer.Option(None, help="Bind address (default ATLAS_API_HOST)."),
    port: int | None = typer.Option(None, help="Port (default ATLAS_API_PORT)."),
) -> None:
    """Serve the HTTP API with uvicorn (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    settings = _settings()
    uvicorn.run("service.app:app", host=host or settings.api_host, port=port or settings.api_port)


@app.command("worker")
def worker_command(
    queues: str = typer.Option("gpu,cpu", help="Comma-separated queues to consume (gpu, cpu)."),
    concurrency: int = typer.Option(1, help="Pool processes; keep 1 per GPU."),
    name: str = typer.Option("atlas", help="Worker name (the node name is NAME@hostname)."),
    loglevel: str = typer.Option("info"),
) -> None:
    """Start a Celery worker (prefork pool) on the Redis broker."""
    from workers.celery_app import CPU_QUEUE, GPU_QUEUE, celery_app

    unknown = set(queues.split(",")) - {GPU_QUEUE, CPU_QUEUE}
    if unknown:
        raise _fail(ValueError(f"unknown queue(s) {sorted(unknown)}; choose from gpu, cpu"))
    celery_app.worker_main([
        "worker", "--queues", queues, "--concurrency", str(concurrency), "--pool", "prefork",
        "--hostname", f"{name}@%h", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ])


@app.command("reaper")
def reaper_command(
    stale_after_s: float | None = typer.Option(None, help="Re-enqueue running prompts whose heartbeat is older "
                                                          "than this (default ATLAS_PIPELINE_STALE_AFTER_S)."),
    interval_s: float | None = typer.Option(None, help="Seconds between passes (default ATLAS_PIPELINE_REAPER_INTERVAL_S)."),
    once: bool = typer.Option(False, "--once", help="One pass, print what was re-enqueued, exit."),
) -> None:
    """Re-enqueue prompts whose worker died without Celery noticing (stale heartbeat). Run one per deployment."""
    from workers.connections.neo4j import neo4j_driver
    from workers.connections.redis import redis_client
    from workers.pipeline.config import get_pipeline_settings
    from workers.pipeline.reaper import reap_once, run_reaper
    from workers.tasks import enqueue_prompt

    settings, cfg = _settings(), get_pipeline_settings()
    stale = stale_after_s if stale_after_s is not None else cfg.stale_after_s
    with neo4j_driver(settings) as driver:
        r = redis_client(settings)
        if once:
            reaped = reap_once(driver, r, enqueue_prompt, stale, settings.neo4j_database)
            typer.echo(f"re-enqueued {len(reaped)} prompt(s)" + (f": {', '.join(reaped)}" if reaped else ""))
            return
        _echo(f"reaper: every {interval_s or cfg.reaper_interval_s:.0f}s, stale after {stale:.0f}s (Ctrl-C stops)")
        run_reaper(driver, r, enqueue_prompt, stale, interval_s or cfg.reaper_interval_s, settings.neo4j_database)


@app.command("demo")
def demo_command(
    model: str = typer.Option("zoo", "--model", help=(
        "zoo: the zoo's tiny model with prompts of its three tasks (built on first use). gemma3-270m: Gemma 3 270M "
        "with the trained slice of dictionaries (built on first use, a few CPU minutes) and IOI prompts.")),
) -> None:
    """Start the services if needed, migrate, and run the main job end to end (as far as it exists)."""
    from service.db.migrations import MigrationError
    from service.demo import DemoError, demo_steps, run_demo

    try:
        ctx = run_demo(_settings(), _echo, demo_steps(model))
    except (ServiceError, MigrationError, DemoError) as exc:
        raise _fail(exc) from None
    typer.echo(f"ping: {ctx.results.get('ping')}")
    typer.echo(f"health: {ctx.results.get('health')}")


@app.command("case-study")
def case_study_command(
    model: str = typer.Argument("gemma3-270m", help="The model: gemma3-270m (the only one so far)."),
    dictionaries: Path | None = typer.Option(None, "--dictionaries", help=(
        "A dictionary set directory for the model; default: the trained slice (built on first use).")),
    full_set: bool = typer.Option(False, "--full-set", help=(
        "Use the full set (36 sites, 4,096 features): built first, resumably, if not cached (hours on a CPU; "
        "`atlas dictionaries gemma build`).")),
    tokens: int = typer.Option(GemmaDictionarySpec.tokens, "--tokens", help="With --full-set: the set's training tokens."),
    ioi: int = typer.Option(200, "--ioi", help="IOI prompts (also run error-only, with no dictionaries)."),
    induction: int = typer.Option(60, "--induction", help="Induction prompts."),
    brackets: int = typer.Option(60, "--brackets", help="Bracket prompts."),
    facts: int = typer.Option(60, "--facts", help="Factual-recall prompts."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("docs/case-studies/gemma-3-270m"), "--out", help="Where the JSON and plots go."),
) -> None:
    """The case studies of issue #16 through the product: corpora over REST, graphs computed by a real worker
    into Neo4j, answers read back with the analyses API and Cypher; prints its total time."""
    from service.case_study import CaseStudyConfig, run_case_study
    from service.db.migrations import MigrationError
    from service.demo import DemoError

    if model != "gemma3-270m":
        raise _fail(DemoError(f"unknown case-study model {model!r}: gemma3-270m"))
    if full_set and dictionaries is not None:
        raise typer.BadParameter("--full-set and --dictionaries name two dictionary sets: give one")
    started = time.monotonic()
    config = CaseStudyConfig(sizes={"ioi": ioi, "induction": induction, "brackets": brackets, "facts": facts},
                             dictionaries=GemmaDictionarySpec(tokens=tokens) if full_set else dictionaries, out=out,
                             seed=seed)
    try:
        results = run_case_study(_settings(), _echo, config)
    except (ServiceError, MigrationError, DemoError) as exc:
        raise _fail(exc) from None
    for name, s in results["tasks"].items():
        check = s.get("io_position_check")
        typer.echo(f"{name}: {s['n_graphs']} graphs, accuracy {s.get('accuracy')}, best-position roles "
                   f"{s['best_role_fraction']}" + (f", IO-position check {check['fraction']:.3f}" if check else ""))
    typer.echo(f"wrote {out}; total time {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    app()
