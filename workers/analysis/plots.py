"""Pictures of analysis results, beside their JSON (``GET /analyses/{id}/plot.png`` or ``.svg``): a bar chart
where a list of numbers says it better as one. Pure functions of the stored result; matplotlib's Agg backend.

| kind | picture |
|---|---|
| recurring_features | the share of graphs each feature is in (the top 30) |
| consensus_circuit | the graphs each consensus feature is in (the top 30) |
| circuit_difference | the shared features' activations in A and in B, side by side |
| interventions | per target, the frozen and the live change, side by side |
"""

from __future__ import annotations

import io
from collections.abc import Callable

TOP = 30


class NoPlot(LookupError):
    """This kind of analysis has no picture (its JSON says it all)."""


def _bars(labels: list[str], series: dict[str, list[float]], xlabel: str, title: str):  # noqa: ANN202 - Figure
    from matplotlib.figure import Figure

    n = max(1, len(labels))
    fig = Figure(figsize=(8, 1.2 + 0.28 * n))
    ax = fig.add_subplot()
    k = len(series)
    h = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        ax.barh([i + (j - (k - 1) / 2) * h for i in range(len(values))], values, height=h, label=name,
                gid=f"series-{j}")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # first row at the top, as in the JSON
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if k > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _recurring(r: dict):  # noqa: ANN202
    rows = r["features"][:TOP]
    return _bars([x["fkey"] for x in rows], {"fraction": [x["fraction"] for x in rows]}, "share of graphs",
                 f"recurring features ({r['n_graphs']} graphs)")


def _consensus(r: dict):  # noqa: ANN202
    rows = r["features"][:TOP]
    return _bars([x["fkey"] for x in rows], {"graphs": [x["n_graphs"] for x in rows]}, "graphs",
                 f"consensus features (in >= {r['min_graphs']} of {r['n_graphs']} graphs)")


def _difference(r: dict):  # noqa: ANN202
    rows = r["features_shared"][:TOP]
    return _bars([x["fkey"] for x in rows], {r["graph_a"]: [x["activation_a"] for x in rows],
                                            r["graph_b"]: [x["activation_b"] for x in rows]},
                 "activation", f"shared features (Jaccard {r['jaccard']:.2f})")


def _interventions(r: dict):  # noqa: ANN202
    rows = r["targets"]
    return _bars([x["label"] for x in rows], {"frozen": [x["frozen_change"] for x in rows],
                                              "live": [x["live_change"] or 0.0 for x in rows]},
                 "change of the target", f"{r['mode']} of {len(r['edits'])} feature(s)")


PLOTS: dict[str, Callable[[dict], object]] = {"recurring_features": _recurring, "consensus_circuit": _consensus,
                                              "circuit_difference": _difference, "interventions": _interventions}


def plot_analysis(kind: str, result: dict, fmt: str) -> bytes:
    """The picture of a done analysis as PNG or SVG bytes. Raises NoPlot for kinds without one."""
    if kind not in PLOTS:
        raise NoPlot(f"analyses of kind {kind!r} have no picture (kinds with one: {', '.join(sorted(PLOTS))}); "
                     "the JSON is at GET /analyses/{id}")
    fig = PLOTS[kind](result)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    return buf.getvalue()
