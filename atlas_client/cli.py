"""`atlas corpus submit` and `atlas circuit`: the client's tasks from a shell (service/cli.py mounts them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from atlas_client.api import Atlas, AtlasError

corpus_app = typer.Typer(help="Corpora through the HTTP API (a running `atlas api`).", no_args_is_help=True)

URL = typer.Option(None, "--url", envvar="ATLAS_API_URL", help="The API (default http://127.0.0.1:8000).")
KEY = typer.Option(None, "--key", envvar="ATLAS_API_KEY", help="An API key ('write' to submit).")


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"{text!r}: write NAME=VALUE, e.g. max_features=40", param_hint="--setting")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


@corpus_app.command("submit")
def submit_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Prompts: .jsonl (a JSON string or "
                                "{text, targets} a line), .json (a list) or text (a prompt a line)."),
    model: str = typer.Option(..., "--model", "-m", help="A registered model_id."),
    dictionaries: str = typer.Option(..., "--dictionaries", "-d", help="A registered dictionary_set_id."),
    name: str = typer.Option("", help="A name for the corpus."),
    setting: list[str] = typer.Option([], "--setting", "-s", help="NAME=VALUE of POST /corpora's settings "
                                      "(prune, node_threshold, edge_threshold, max_features, batch_size); repeatable."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end with a progress bar."),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """Submit a corpus; prints the job id (with --wait, follows it and exits 1 unless every prompt succeeded)."""
    settings = dict(_setting(s) for s in setting)
    with Atlas(url, key) as atlas:
        try:
            job = atlas.submit_corpus(file, model, dictionaries, settings=settings, name=name)
            typer.echo(f"corpus {job.corpus_id}, job {job.job_id}: {job.accepted['n_prompts']} prompts queued"
                       + (f" ({len(job.accepted['duplicates'])} duplicates dropped)" if job.accepted["duplicates"] else ""))
            if not wait:
                return
            status = job.wait(progress=True)
        except (AtlasError, ValueError, OSError) as exc:
            raise _fail(exc) from None
    rate = status["throughput_per_min"]
    typer.echo(f"job {job.job_id}: {status['state']}, {status['done']} done, {status['failed']} failed of "
               f"{status['total']}" + (f", {rate:.1f} prompts/min" if rate else ""))
    for f in status["failures"]:
        typer.echo(f"  prompt {f['index']} failed: {f['error']}", err=True)
    if status["state"] != "complete":
        raise typer.Exit(code=1)


def circuit_command(
    graph_id: str = typer.Argument(..., help="A complete graph's id (GET /graphs lists them)."),
    format: str = typer.Option("json", "--format", "-f", help="json (nodes, edges, graph) or neuronpedia "
                                                             "(Neuronpedia graph JSON)."),
    node_threshold: float = typer.Option(0.0, help="Keep nodes with influence >= this."),
    edge_threshold: float = typer.Option(0.0, help="Keep edges with |w| >= this."),
    max_nodes: int = typer.Option(500, help="Top nodes by influence (embeddings and logits always kept)."),
    max_edges: int = typer.Option(5000, help="Top edges by |w|."),
    target: str | None = typer.Option(None, help="A node id: only its upstream cone."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """Print (or write) a stored graph's circuit, pruned at read time."""
    if format not in ("json", "neuronpedia"):
        raise typer.BadParameter(f"{format!r}: choose json or neuronpedia", param_hint="--format")
    pruning = {"node_threshold": node_threshold, "edge_threshold": edge_threshold, "max_nodes": max_nodes,
               "max_edges": max_edges, "target": target}
    with Atlas(url, key) as atlas:
        try:
            if format == "neuronpedia":
                payload = atlas.neuronpedia(graph_id, **pruning)
            else:
                c = atlas.circuit(graph_id, **pruning)
                payload = {"graph": c.graph, "nodes": c.nodes, "edges": c.edges, "pruning": c.pruning, "stats": c.stats}
        except AtlasError as exc:
            raise _fail(exc) from None
    text = json.dumps(payload, indent=1)
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n")
        typer.echo(f"wrote {output} ({len(payload['nodes'])} nodes)", err=True)
