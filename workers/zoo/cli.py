"""``atlas zoo``: build the model zoo and show what it holds.

atlas zoo build [--force] [--no-progress]   build (or reuse) the zoo for this checkout
atlas zoo info                              where it is, its models, accuracies and dictionaries
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from workers.settings import get_settings
from workers.zoo.build import ACCURACY_BAR, DICTIONARY_MODEL, ZooPaths, build_key, ensure_zoo, read_report
from workers.zoo.corpus import SCORED_TASKS

app = typer.Typer(help="The model zoo: synthetic task corpus, tiny trained models and their dictionaries.")
console = Console()


def _print_report(paths: ZooPaths) -> None:
    report = read_report(paths)
    console.print(f"[bold]zoo[/bold] {paths.root}  (build key {report['build_key']})")
    timings = Table(title="timings (s)")
    timings.add_column("stage")
    timings.add_column("seconds", justify="right")
    for stage, s in report["timings_s"].items():
        timings.add_row(stage, f"{s:.1f}")
    console.print(timings)

    models = Table(title="held-out answer accuracy (argmax at the last prompt position)")
    models.add_column("model")
    for task in (*SCORED_TASKS, "filler"):
        models.add_column(task, justify="right")
    models.add_column("IOI logit diff", justify="right")
    models.add_column("params", justify="right")
    for name, info in report["models"].items():
        acc = info["heldout"]["accuracy"]
        cells = []
        for task in (*SCORED_TASKS, "filler"):
            a = acc.get(task, float("nan"))
            bad = name == DICTIONARY_MODEL and task in SCORED_TASKS and a < ACCURACY_BAR
            cells.append(f"[red]{a:.3f}[/red]" if bad else f"{a:.3f}")
        models.add_row(name, *cells, f"{info['heldout']['ioi_logit_diff']:.2f}", f"{info['n_parameters']:,}")
    console.print(models)
    console.print(f"bar: {DICTIONARY_MODEL} >= {ACCURACY_BAR:.0%} on each of {', '.join(SCORED_TASKS)}")

    if report.get("dictionaries") is None:
        console.print("[yellow]dictionaries: not built (workers.dictionaries.training.train_zoo_dictionaries "
                      "is not available)[/yellow]")  # fmt: skip
    else:
        console.print(f"[bold]dictionaries[/bold] ({DICTIONARY_MODEL}): {paths.dictionaries}")
        console.print_json(json.dumps(report["dictionaries"], default=str))


@app.command()
def build(
    force: bool = typer.Option(
        False, "--force", help="Rebuild even if a finished build for this hash exists."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars or per-stage log lines."),
) -> None:
    """Build the zoo (corpus, tokenizer, gpt2-2l, gpt2-4l, llama-2l, gpt2-4l dictionaries), or reuse it."""
    paths = ensure_zoo(get_settings(), force=force, progress=not no_progress)
    _print_report(paths)


@app.command()
def info() -> None:
    """Where the zoo for this checkout lives and what it contains (builds nothing)."""
    settings = get_settings()
    key = build_key()
    root = settings.zoo_dir / key
    console.print(f"zoo directory: {settings.zoo_dir}")
    console.print(f"build key of this checkout: {key}")
    others = (
        sorted(p.name for p in settings.zoo_dir.glob("*") if p.is_dir() and p.name != key)
        if settings.zoo_dir.exists()
        else []
    )
    if others:
        console.print(f"other builds present: {', '.join(others)}")
    if not (root / "COMPLETE").is_file():
        console.print("[yellow]not built for this checkout: run `atlas zoo build`[/yellow]")
        raise typer.Exit(code=1)
    _print_report(ensure_zoo(settings, progress=False))


if __name__ == "__main__":
    app()
