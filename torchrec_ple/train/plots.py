"""Plots of ``compare`` results (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["plot_seesaw", "plot_gates", "plot_sweep_gains"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ok_archs(result: Dict[str, Any]) -> List[str]:
    return [
        a
        for a, e in result["architectures"].items()
        if all(s["mean"] is not None for s in e["tasks"].values())
    ]


def _axis_label(name: str, task: Dict[str, Any], arrow: str) -> str:
    how = "higher is better" if task["higher_is_better"] else "lower is better, axis inverted"
    return f"{name} {task['metric'].upper()} ({how}: better {arrow})"


def plot_seesaw(result: Dict[str, Any], path: Path) -> bool:
    """Write the seesaw plot of a ``compare`` result; False when nothing could be plotted.

    Two tasks: one point per architecture at (task A metric, task B metric), error bars =
    std over seeds, dashed lines through single_task. Lower-is-better axes are inverted so
    up and right are always better. Other task counts: a heatmap of MTL gains (or of the
    metric means when there are no gains).
    """
    archs = _ok_archs(result)
    if not archs:
        return False
    tasks = result["tasks"]
    names = list(tasks)
    plt = _pyplot()
    if len(names) == 2:
        fig, ax = plt.subplots(figsize=(7, 6))
        a, b = names
        for arch in archs:
            sa = result["architectures"][arch]["tasks"][a]
            sb = result["architectures"][arch]["tasks"][b]
            ref = arch == "single_task"
            ax.errorbar(
                sa["mean"],
                sb["mean"],
                xerr=sa["std"],
                yerr=sb["std"],
                fmt="s" if ref else "o",
                color="black" if ref else None,
                capsize=3,
                markersize=7,
            )
            ax.annotate(
                arch,
                (sa["mean"], sb["mean"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=9,
            )
            if ref:
                ax.axvline(sa["mean"], color="gray", linestyle="--", linewidth=1)
                ax.axhline(sb["mean"], color="gray", linestyle="--", linewidth=1)
        if not tasks[a]["higher_is_better"]:
            ax.invert_xaxis()
        if not tasks[b]["higher_is_better"]:
            ax.invert_yaxis()
        ax.set_xlabel(_axis_label(a, tasks[a], "→"))
        ax.set_ylabel(_axis_label(b, tasks[b], "↑"))
        title = "Seesaw: mean ± std over seeds"
        if "single_task" in archs:
            title += "\n(upper right of the dashed lines: gain on both tasks)"
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    elif len(names) == 1:
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(archs)), 4))
        t = names[0]
        stats = [result["architectures"][x]["tasks"][t] for x in archs]
        ax.bar(archs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=3)
        ax.set_ylabel(f"{t} {tasks[t]['metric'].upper()}")
        ax.tick_params(axis="x", rotation=45)
    else:
        use_gain = bool(result.get("gains"))
        key = "gain" if use_gain else "mean"
        fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 0.5 * len(archs) + 2))
        values = [[result["architectures"][x]["tasks"][t][key] for t in names] for x in archs]
        _heatmap(ax, values, archs, names, signed=use_gain)
        ax.set_title("MTL gain vs single_task (positive = better)" if use_gain else "metric mean")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _heatmap(
    ax: Any, values: List[List[Optional[float]]], rows: List[str], cols: List[str], signed: bool
) -> None:
    import numpy as np

    arr = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
    if signed:
        lim = float(np.nanmax(np.abs(arr))) if np.isfinite(arr).any() else 1.0
        im = ax.imshow(arr, cmap="RdBu", vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    else:
        im = ax.imshow(arr, cmap="viridis", aspect="auto")
    ax.figure.colorbar(im, ax=ax)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if np.isfinite(arr[i, j]):
                ax.text(
                    j,
                    i,
                    f"{arr[i, j]:+.4f}" if signed else f"{arr[i, j]:.4f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                )


def plot_gates(
    gates: Dict[str, Dict[str, Any]], path: Path, title: str = "mean gate weights"
) -> None:
    """Mean gate weights: one panel per gate (``level{j}/{task}``), one bar per expert."""
    plt = _pyplot()
    keys = sorted(gates)
    cols = min(len(keys), 3)
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        g = gates[key]
        mean = list(g["mean"])
        experts = list(g.get("experts") or [f"e{i}" for i in range(len(mean))])
        colors = ["tab:orange" if "shared" in str(e) else "tab:blue" for e in experts]
        ax.bar(range(len(mean)), mean, color=colors)
        ax.set_xticks(range(len(mean)), experts, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(key, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _point_series(
    sweep: Dict[str, Any],
) -> Tuple[List[str], Dict[str, Dict[str, List[Optional[float]]]]]:
    labels = [p["label"] for p in sweep["points"]]
    series: Dict[str, Dict[str, List[Optional[float]]]] = {}
    for i, p in enumerate(sweep["points"]):
        for arch, e in p["compare"].get("architectures", {}).items():
            for task, s in e["tasks"].items():
                col = series.setdefault(task, {}).setdefault(arch, [None] * len(labels))
                col[i] = s.get("gain")
    return labels, series


def plot_sweep_gains(sweep: Dict[str, Any], path: Path) -> bool:
    """MTL gain per sweep point, one panel per task and one line per architecture."""
    labels, series = _point_series(sweep)
    series = {
        t: {a: v for a, v in by.items() if a != "single_task" and any(x is not None for x in v)}
        for t, by in series.items()
    }
    series = {t: by for t, by in series.items() if by}
    if not series or len(labels) < 2:
        return False
    plt = _pyplot()
    short = [
        " ".join(f"{k.split('.')[-1]}={v}" for k, v in p["values"].items()) for p in sweep["points"]
    ]
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4.5), squeeze=False)
    for ax, (task, by) in zip(axes[0], series.items()):
        for i, (arch, vals) in enumerate(by.items()):
            xs = [j for j, v in enumerate(vals) if v is not None]
            ax.plot(
                xs, [vals[j] for j in xs], marker="o", linestyle="-" if i < 10 else "--", label=arch
            )
        ax.axhline(0, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(labels)), short, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: MTL gain vs single_task (positive = better)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
