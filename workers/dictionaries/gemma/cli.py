"""``atlas dictionaries gemma``: the full set of Gemma 3 270M dictionaries (``full.py``).

atlas dictionaries gemma build [--layers 4,9] [--d-dict 4096] [--k 32] [--tokens N] [...]   build or resume (cached)
atlas dictionaries gemma info  [same options]       where the set of this spec lives, its report or build progress
"""

from __future__ import annotations

import json

import typer

from workers.dictionaries.gemma.full import GemmaDictionarySpec, ensure_gemma_dictionaries, read_progress

app = typer.Typer(help="Dictionaries for Gemma 3 270M: an attention SAE and a transcoder per layer, streamed "
                       "training on the real-text corpus, resumable, cached by content hash.", no_args_is_help=True)

_D = GemmaDictionarySpec()


def _spec(layers: str, sites: str, d_dict: int, k: int, tokens: int, batch_size: int, lr: float,
          resample_until: float, buffer_tokens: int, heldout_sequences: int, checkpoint_every: int) -> GemmaDictionarySpec:
    try:
        return GemmaDictionarySpec(
            layers=tuple(int(x) for x in layers.split(",")) if layers else _D.layers,
            sites=tuple(s.strip() for s in sites.split(",")), d_dict=d_dict, k=k, tokens=tokens, batch_size=batch_size,
            lr=lr, resample_until=resample_until, buffer_tokens=buffer_tokens, heldout_sequences=heldout_sequences, checkpoint_every=checkpoint_every)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


def _options(fn):  # noqa: ANN001, ANN202 - the same options on both commands
    import inspect

    params = [
        inspect.Parameter("layers", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("", help="comma-separated layers (default all 18), e.g. 4,9")),
        inspect.Parameter("sites", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("attn,mlp", help="attn, mlp or both")),
        inspect.Parameter("d_dict", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(_D.d_dict, help="features per dictionary")),
        inspect.Parameter("k", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(_D.k, help="TopK k")),
        inspect.Parameter("tokens", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(_D.tokens, help="training tokens")),
        inspect.Parameter("batch_size", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(_D.batch_size, help="tokens per step")),
        inspect.Parameter("lr", inspect.Parameter.KEYWORD_ONLY, annotation=float, default=typer.Option(_D.lr)),
        inspect.Parameter("resample_until", inspect.Parameter.KEYWORD_ONLY, annotation=float,
                          default=typer.Option(_D.resample_until, help="resample dead features in this first fraction of steps")),
        inspect.Parameter("buffer_tokens", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(_D.buffer_tokens, help="rows of each site's shuffle buffer")),
        inspect.Parameter("heldout_sequences", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(_D.heldout_sequences, help="held-out sequences for the metrics")),
        inspect.Parameter("checkpoint_every", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(_D.checkpoint_every, help="steps between checkpoints")),
    ]
    fn.__signature__ = inspect.Signature(params)
    return fn


@app.command("build")
@_options
def build_command(**kw) -> None:  # noqa: ANN003
    """Build the set for this spec (or resume its killed build, or reuse it) on ATLAS_DEVICE; prints its report."""
    path = ensure_gemma_dictionaries(_spec(**kw))
    report = json.loads((path / "report.json").read_text())
    typer.echo(f"{path}")
    typer.echo(summary(report))


@app.command("info")
@_options
def info_command(**kw) -> None:  # noqa: ANN003
    """Where the set for this spec lives, and its report (or the progress of its build); builds nothing."""
    info = read_progress(_spec(**kw))
    typer.echo(f"key {info['key']}  {info['path']}  {'complete' if info['complete'] else 'not built'}")
    if info["complete"]:
        typer.echo(summary(info["report"]))
    elif "progress" in info:
        p = info["progress"]
        typer.echo(f"building: step {p['step']:,}/{p['steps']:,}, {p['tokens']:,} tokens, "
                   f"{p['tokens_per_second']:,.0f} tok/s, ETA {p['eta_seconds'] / 60:,.1f} min"
                   f"{', checkpoint kept' if info['checkpoint'] else ''}")


def summary(report: dict) -> str:
    lines = [f"{'site':<10} {'EV':>7} {'L0':>6} {'dead':>7}"]
    for name, r in report["dictionaries"].items():
        lines.append(f"{name:<10} {r['explained_variance']:7.3f} {r['l0']:6.1f} {r['dead_fraction']:7.3f}")
    ce = report["cross_entropy"]
    lines.append(f"CE clean {ce['clean']:.3f}, all spliced {ce['all']['ce']:.3f} "
                 f"(+{ce['all']['relative_increase']:.1%}); {report['tokens']:,} tokens, "
                 f"stream {report['tokens'] / max(report['stream_seconds'], 1e-9):,.0f} tok/s, "
                 f"training {report['tokens'] / max(report['train_seconds'], 1e-9):,.0f} tok/s, "
                 f"peak RSS {report['peak_rss_bytes'] / 2**30:.1f} GiB")
    fails = report.get("quality_failures")
    if fails is not None:
        lines.append("quality bar met" if not fails else "quality bar missed: " + "; ".join(fails))
    return "\n".join(lines)
