"""``atlas attribute``: compute one attribution graph and print a readable circuit summary.

The lead mounts :func:`attribute` on the project's typer app; it also runs standalone:
``python -m workers.engine.cli --model DIR --dictionaries DIR "prompt" --target top``. ``--device`` and
``--dtype`` (default ATLAS_DEVICE / ATLAS_DTYPE) say where the model and dictionaries are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from workers.models.placement import Placement
from workers.vocabulary.defaults import EDGE_THRESHOLD, NODE_THRESHOLD
from workers.vocabulary.kinds import OUTPUT_KINDS, STORE_KIND

console = Console()


def load(model_dir: Path, dictionaries_dir: Path, placement: Placement | None = None, lazy: bool = True):
    """(Linearised, tokenizer or None) from a local Hugging Face model directory and a dictionary set, on
    ``placement``'s device and dtype (default: ATLAS_DEVICE / ATLAS_DTYPE); ``lazy``: the dictionaries' matrices
    memory-mapped (``load_dictionary_set(lazy=True)``; moving them to another device or dtype copies them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine.linearise import Linearised

    placement = placement or Placement.from_settings()
    try:
        placement.torch_device()  # before loading anything: a missing GPU is reported at once
    except RuntimeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not model_dir.is_dir():
        raise typer.BadParameter(f"{model_dir} is not a directory (expected a Hugging Face model directory)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):
        tok = None
    dicts = load_dictionary_set(dictionaries_dir, model, lazy=lazy)
    return Linearised(model, dicts).place(placement), tok


def attribute(
    model: Path = typer.Option(..., "--model", help="Hugging Face model directory"),
    dictionaries: Path = typer.Option(..., "--dictionaries", help="dictionary set directory (any supported format)"),
    prompt: str = typer.Argument(..., help="prompt text (or token ids separated by commas with --ids)"),
    target: list[str] = typer.Option(
        [], "--target", "-t",
        help="top | logit:TOKEN[@POS] | diff:GOOD,BAD[@POS] | feat:L2.mlp:p5:f123 (repeatable; default top)"),
    ids_input: bool = typer.Option(False, "--ids", help="the prompt is comma-separated token ids"),
    batch_size: int = typer.Option(32, help="targets per backward pass"),
    max_feature_nodes: int | None = typer.Option(
        None, "--max-feature-nodes", min=0,
        help="node budget: at most this many active features become rows (the rest: one 'unexp' leaf per site "
             "and position; rows stay complete). Default: every active feature"),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N (default: ATLAS_DEVICE, else cpu)"),
    dtype: str | None = typer.Option(None, help="weights' dtype: fp32 | bf16 (default: ATLAS_DTYPE, else fp32)"),
    lazy: bool = typer.Option(True, "--lazy/--eager",
                              help="memory-map the dictionaries' matrices (native and circuit-tracer transcoder sets): "
                                   "decoder rows are read for active features only, as reclaimable page cache"),
    node_threshold: float = typer.Option(NODE_THRESHOLD, help="influence pruning: node threshold"),
    edge_threshold: float = typer.Option(EDGE_THRESHOLD, help="influence pruning: edge threshold"),
    top: int = typer.Option(15, help="nodes to list"),
    out: Path | None = typer.Option(None, help="save the graph here (safetensors + JSON)"),
    neuronpedia: Path | None = typer.Option(None, help="write Neuronpedia graph JSON (pruned nodes) to this file"),
) -> None:
    """Compute an exact attribution graph for PROMPT and print the circuit."""
    from workers.engine.attribution import AttributionSettings
    from workers.engine.attribution import attribute as run_attribution
    from workers.engine.pruning import prune

    default = Placement.from_settings()
    try:
        placement = Placement(device or default.device, dtype or default.dtype)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    lin, tok = load(model, dictionaries, placement, lazy=lazy)
    if ids_input:
        text_or_ids: str | list[int] = [int(x) for x in prompt.split(",") if x.strip()]
    else:
        if tok is None:
            raise typer.BadParameter(f"{model} has no tokenizer: pass token ids with --ids")
        text_or_ids = prompt
    settings = AttributionSettings(batch_size=batch_size, max_feature_nodes=max_feature_nodes)
    with Progress(TextColumn("attributing"), BarColumn(), TextColumn("{task.completed}/{task.total} rows"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("rows", total=None)
        g = run_attribution(lin, text_or_ids, target or None, tokenizer=tok, settings=settings,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    pr = prune(g, node_threshold, edge_threshold)
    g.influence = pr.influence  # saved with the graph and in the Neuronpedia export
    tokens = g.token_strings or [str(t) for t in g.tokens]
    console.print(f"[bold]prompt[/bold] ({len(tokens)} tokens): " + " ".join(f"[{i}]{t!r}" for i, t in enumerate(tokens)))
    tt = Table(title="targets")
    for c in ("id", "label", "value", "weight"):
        tt.add_column(c)
    for t in g.targets:
        tt.add_row(t.node_id, t.label, f"{t.value:.4g}", f"{t.weight:.3g}")
    console.print(tt)
    nt = Table(title=f"top {top} nodes by influence ({pr.scores['n_nodes_kept']} of {g.n_nodes} kept)")
    for c in ("node", "kind", "pos", "token", "activation", "influence"):
        nt.add_column(c)
    infl = pr.influence.clone()
    infl[[i for i, k in enumerate(g.kinds) if STORE_KIND[k] in (*OUTPUT_KINDS, "bias")]] = -1
    for i in infl.argsort(descending=True)[:top].tolist():
        p = int(g.pos[i])
        nt.add_row(g.node_ids[i], g.kinds[i], str(p), tokens[p] if 0 <= p < len(tokens) else "",
                   f"{float(g.activation[i]):.3g}" if g.kinds[i] == "feat" else "", f"{float(infl[i]):.3g}")
    console.print(nt)
    st = Table(title="scores")
    for c in ("metric", "value"):
        st.add_column(c)
    for k, v in pr.scores.items():
        st.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    st.add_row("seconds", f"{g.provenance['timings_s']['total']:.2f}")
    console.print(st)
    if out is not None:
        g.save(out)
        console.print(f"graph saved to {out}")
    if neuronpedia is not None:
        neuronpedia.write_text(json.dumps(g.to_neuronpedia(keep=pr.node_mask, node_threshold=node_threshold)))
        console.print(f"Neuronpedia JSON written to {neuronpedia}")


def main() -> None:
    typer.run(attribute)


if __name__ == "__main__":
    main()
