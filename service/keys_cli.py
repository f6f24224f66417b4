"""`atlas keys ...`: create, list and revoke API keys (service/auth.py). Mounted by service/cli.py."""

from __future__ import annotations

import typer

from service.auth import SCOPES, create_key, list_keys, revoke_key

keys_app = typer.Typer(help="API keys for /cypher and the write endpoints (hashed at rest in Neo4j).",
                       no_args_is_help=True)


def _driver():  # noqa: ANN202 - neo4j.Driver
    from service.db import neo4j_driver

    return neo4j_driver()


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="A label for the key (who or what uses it)."),
           scope: list[str] = typer.Option(["cypher", "write"], "--scope", help=f"One of {', '.join(SCOPES)}; "
                                           "repeat for several.")) -> None:
    """Create a key and print it ONCE (only its hash is stored)."""
    from workers.settings import get_settings

    try:
        with _driver() as driver:
            key, plaintext = create_key(driver, name, tuple(scope), database=get_settings().neo4j_database)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(plaintext)
    typer.echo(f"key_id {key.key_id}, scopes {', '.join(key.scopes)}: store it now, it cannot be shown again",
               err=True)


@keys_app.command("list")
def list_() -> None:
    """List keys (ids, names, scopes; never secrets)."""
    from workers.settings import get_settings

    with _driver() as driver:
        for k in list_keys(driver, database=get_settings().neo4j_database):
            state = "revoked" if k["revoked"] else "active"
            typer.echo(f"{k['key_id']}  {state:7}  {','.join(k['scopes']):20}  {k['name']}")


@keys_app.command("revoke")
def revoke(key_id: str) -> None:
    """Revoke a key by id; requests with it get 401 from then on."""
    from workers.settings import get_settings

    with _driver() as driver:
        if not revoke_key(driver, key_id, database=get_settings().neo4j_database):
            typer.secho(f"error: no key {key_id!r}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
