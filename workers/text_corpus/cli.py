"""``atlas data``: the real-text corpus (Debian packages' English, tokenised for a real model).

atlas data build [--source NAME ...] [--heldout-permille 50] [--max-docs N] [--force]
atlas data info  [same selection]      where the corpus is and what it holds (no build)
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from workers.text_corpus.build import (
    SPLITS,
    TextCorpus,
    TextCorpusSpec,
    build_key,
    build_text_corpus,
    corpus_dir,
)
from workers.text_corpus.sources import SOURCES, MissingSource

app = typer.Typer(help="The real-text corpus: English from Debian packages, deduplicated, split and tokenised.")
console = Console()

_SOURCE_HELP = f"a source to include (repeatable; default all: {', '.join(SOURCES)})"


def _spec(sources: list[str] | None, heldout_permille: int, max_docs: int | None) -> TextCorpusSpec:
    try:
        return TextCorpusSpec(sources=tuple(sources or SOURCES), heldout_permille=heldout_permille,
                              max_docs_per_source=max_docs)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


def print_corpus(corpus: TextCorpus) -> None:
    m = corpus.manifest
    console.print(f"[bold]text corpus[/bold] {corpus.root}  (build key {m['build_key']}, "
                  f"tokenizer {m['tokenizer']['name']}, built in {m['seconds']:.0f} s)")
    table = Table(title="documents and tokens per source, after deduplication (packages below)")
    for col in ("source", "read", *(f"docs {s}" for s in SPLITS), *(f"tokens {s}" for s in SPLITS)):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, s in m["sources"].items():
        table.add_row(name, f"{s['documents_read']:,}", *(f"{s['documents'][x]:,}" for x in SPLITS),
                      *(f"{s['tokens'][x]:,}" for x in SPLITS))
    table.add_row("all", "", *(f"{m['documents'][x]:,}" for x in SPLITS), *(f"{m['tokens'][x]:,}" for x in SPLITS))
    console.print(table)
    console.print(f"duplicates dropped: {m['duplicates_dropped']:,}")
    for name, s in m["sources"].items():
        console.print(f"{name}: Debian package {s['package']} {s['version']}")


@app.command("build")
def build_command(
    source: list[str] | None = typer.Option(None, "--source", help=_SOURCE_HELP),
    heldout_permille: int = typer.Option(50, help="held-out share in thousandths (by document hash)"),
    max_docs: int | None = typer.Option(None, help="at most this many documents per source (a slice)"),
    force: bool = typer.Option(False, help="rebuild even if the cache has this build"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Build (or reuse) the corpus, cached by content hash under ATLAS_CACHE_DIR/text."""
    try:
        corpus = build_text_corpus(_spec(source, heldout_permille, max_docs), force=force, progress=progress)
    except MissingSource as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    print_corpus(corpus)


@app.command("info")
def info_command(
    source: list[str] | None = typer.Option(None, "--source", help=_SOURCE_HELP),
    heldout_permille: int = typer.Option(50),
    max_docs: int | None = typer.Option(None),
) -> None:
    """Show the corpus for this selection, if built."""
    try:
        key, _ = build_key(_spec(source, heldout_permille, max_docs))
    except MissingSource as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    root = corpus_dir() / key
    if not (root / "manifest.json").is_file():
        console.print(f"not built: {root} (run `atlas data build`)")
        raise typer.Exit(1)
    import json

    print_corpus(TextCorpus(root, json.loads((root / "manifest.json").read_text())))
