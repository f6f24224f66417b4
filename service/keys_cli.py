"""`atlas keys ...`: create, list and revoke API keys (service/auth.py). Mounted by service/cli.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from service.auth import SCOPES, create_key, list_keys, move_keys_out_of_neo4j, revoke_key

keys_app = typer.Typer(help="API keys for /cypher and the write endpoints (hashed at rest in Redis, out of the "
                            "reach of user Cypher).", no_args_is_help=True)


@contextmanager
def _key_store() -> Iterator[object]:
    """The Redis client holding the keys, after any keys still stored in Neo4j (older versions) moved there."""
    from workers.connections.neo4j import neo4j_driver
    from workers.connections.redis import redis_client
    from workers.settings import get_settings

    settings = get_settings()
    r = redis_client(settings)
    try:
        with neo4j_driver(settings) as driver:
            moved = move_keys_out_of_neo4j(driver, r, database=settings.neo4j_database)
        if moved:
            typer.echo(f"moved {moved} key(s) from Neo4j to Redis", err=True)
        yield r
    finally:
        r.close()


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="A label for the key (who or what uses it)."),
           scope: list[str] = typer.Option(["cypher", "write"], "--scope", help=f"One of {', '.join(SCOPES)}; "
                                           "repeat for several.")) -> None:
    """Create a key and print it ONCE (only its hash is stored)."""
    try:
        with _key_store() as r:
            key, plaintext = create_key(r, name, tuple(scope))
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(plaintext)
    typer.echo(f"key_id {key.key_id}, scopes {', '.join(key.scopes)}: store it now, it cannot be shown again",
               err=True)


@keys_app.command("list")
def list_() -> None:
    """List keys (ids, names, scopes; never secrets)."""
    with _key_store() as r:
        for k in list_keys(r):
            state = "revoked" if k["revoked"] else "active"
            typer.echo(f"{k['key_id']}  {state:7}  {','.join(k['scopes']):20}  {k['name']}")


@keys_app.command("revoke")
def revoke(key_id: str) -> None:
    """Revoke a key by id; requests with it get 401 from then on."""
    with _key_store() as r:
        if not revoke_key(r, key_id):
            typer.secho(f"error: no key {key_id!r}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
