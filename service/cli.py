"""The `atlas` command line. Subcommands grow with the project; each is a thin shell over library code."""

from __future__ import annotations

import typer

from service.runtime.processes import ServiceError
from workers.settings import Settings, get_settings

app = typer.Typer(help="Circuit Atlas: exact feature-level circuits of transformer LMs, stored in Neo4j.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
services_app = typer.Typer(help="Local Neo4j and Redis started by the project.", no_args_is_help=True)
app.add_typer(services_app, name="services")


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
