"""Plots of `atlas case-study` (matplotlib, Agg), from its results (the data read back from the API)."""

from __future__ import annotations

from pathlib import Path

ROLE_ORDER = ("IO", "S1", "S2", "answer_first", "current_first", "span1", "span2", "opener", "open_other", "closed",
              "subject_last", "subject", "relation", "END", "other")


def plot_all(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, s in results["tasks"].items():
        roles = [r for r in ROLE_ORDER if r in s["mean_role_share"] or r in s["best_role_fraction"]]
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
        a.bar(roles, [s["mean_role_share"].get(r, 0.0) for r in roles], color="tab:blue")
        a.set_title(f"{name}: mean share of the target by role")
        a.axhline(0, color="k", lw=0.5)
        b.bar(roles, [s["best_role_fraction"].get(r, 0.0) for r in roles], color="tab:orange")
        b.set_title(f"{name}: role of the best position (n={s['n_graphs']})")
        b.set_ylim(0, 1)
        for ax in (a, b):
            ax.tick_params(axis="x", rotation=45, labelsize=8)
        fig.tight_layout()
        p = out / f"{name}-positions.png"
        fig.savefig(p, dpi=72)
        plt.close(fig)
        paths.append(p)
    names = list(results["tasks"])
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, key in enumerate(("replacement", "completeness")):
        vals = [(results["tasks"][n]["scores"][key] or {}).get("mean", 0.0) for n in names]
        ax.bar([j + 0.4 * i for j in range(len(names))], vals, width=0.4, label=key)
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("mean replacement and completeness scores (unpruned graphs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "scores.png"
    fig.savefig(p, dpi=72)
    plt.close(fig)
    paths.append(p)
    checks = {n: s["io_position_check"]["fraction"] for n, s in results["tasks"].items() if "io_position_check" in s}
    if checks:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(list(checks), list(checks.values()), color="tab:green")
        ax.set_ylim(0, 1)
        ax.set_title("IO position carries the largest share", fontsize=9)
        fig.tight_layout()
        p = out / "ioi-position-check.png"
        fig.savefig(p, dpi=72)
        plt.close(fig)
        paths.append(p)
    return paths
