"""``pareto.png``: every architecture's front of the tuned objectives on one plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from torchrec_ple.train.tune_space import Objective
from torchrec_ple.train.tune_study import TuneRun

__all__ = ["plot_pareto"]


def _axis(o: Objective) -> str:
    how = "higher is better" if o.maximize else "lower is better, axis inverted"
    return f"{o.task} {o.metric.upper()} (validation, best epoch; {how})"


def plot_pareto(
    rows: List[Dict[str, Any]], run: TuneRun, objs: Sequence[Objective], path: Path
) -> bool:
    """Write the fronts; False when no trial completed.

    Two or more objectives: the first two as axes (lower-is-better axes inverted, so up and
    right are better); each architecture's completed trials as faint dots, its Pareto front
    as a line through bold markers, its chosen trial (best ``train.select`` score) as a
    star, pruned trials (their values when stopped) as crosses. One objective: the value of
    each trial by trial number.
    """
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        return False
    from torchrec_ple.train.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arch in enumerate(run.architectures):
        mine = [r for r in rows if r["architecture"] == arch]
        color = colors[i % len(colors)]
        if len(objs) == 1:
            _one_objective(ax, mine, objs[0], arch, color)
        else:
            _two_objectives(ax, mine, objs, arch, color)
    if len(objs) == 1:
        ax.set_xlabel("trial")
        ax.set_ylabel(_axis(objs[0]))
        if not objs[0].maximize:
            ax.invert_yaxis()
    else:
        ax.set_xlabel(_axis(objs[0]))
        ax.set_ylabel(_axis(objs[1]))
        hidden = _zoom(ax, rows, objs)
        for o, invert in ((objs[0], ax.invert_xaxis), (objs[1], ax.invert_yaxis)):
            if not o.maximize:
                invert()
        if hidden:
            ax.text(
                0.01,
                0.01,
                f"{hidden} poorer trials outside the view",
                fontsize=8,
                transform=ax.transAxes,
                alpha=0.7,
            )
    more = f" (first two of {len(objs)} objectives)" if len(objs) > 2 else ""
    ax.set_title(f"tune: Pareto front per architecture{more}\n(star: chosen by train.select)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _zoom(ax: Any, rows: List[Dict[str, Any]], objs: Sequence[Objective]) -> int:
    """Frame the fronts and the completed trials, but not those farther below the median
    than twice the best is above it (a diverged trial would squash the fronts); returns
    the trials left out of view."""
    a, b = objs[0].column, objs[1].column
    front = [r for r in rows if r["pareto"] and r[a] is not None and r[b] is not None]
    done = [r for r in rows if r["state"] == "COMPLETE" and r[a] is not None and r[b] is not None]
    shown = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and r[a] is not None]
    if not front:
        return 0
    limits = []
    for key, o in ((a, objs[0]), (b, objs[1])):
        values = sorted(r[key] for r in done)
        median, best = values[len(values) // 2], (values[-1] if o.maximize else values[0])
        reach = median - 2 * (best - median)  # below the median for AUC, above it for MSE
        ends = [r[key] for r in front] + [
            max(values[0], reach) if o.maximize else min(values[-1], reach)
        ]
        lo, hi = min(ends), max(ends)
        pad = max(hi - lo, 1e-4 * max(abs(hi), 1.0)) * 0.1
        limits.append((lo - pad, hi + pad))
    (x0, x1), (y0, y1) = limits
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    return sum(1 for r in shown if not (x0 <= r[a] <= x1 and y0 <= r[b] <= y1))


def _two_objectives(
    ax: Any, mine: List[Dict[str, Any]], objs: Sequence[Objective], arch: str, color: str
) -> None:
    a, b = objs[0].column, objs[1].column
    done = [r for r in mine if r["state"] == "COMPLETE" and r[a] is not None]
    pruned = [r for r in mine if r["state"] == "PRUNED" and r[a] is not None]
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r[a])
    label = f"{arch} ({len(done)} complete, {len(pruned)} pruned)"
    ax.scatter([r[a] for r in done], [r[b] for r in done], color=color, alpha=0.3, s=18)
    if pruned:
        ax.scatter(
            [r[a] for r in pruned], [r[b] for r in pruned], color=color, alpha=0.4, marker="x", s=18
        )
    ax.plot(
        [r[a] for r in front], [r[b] for r in front], "-o", color=color, lw=1.8, ms=6, label=label
    )
    scored = [r for r in done if r["select_score"] is not None]
    if scored:
        c = max(scored, key=lambda r: r["select_score"])
        ax.scatter([c[a]], [c[b]], marker="*", s=220, color=color, edgecolor="black", zorder=5)


def _one_objective(
    ax: Any, mine: List[Dict[str, Any]], o: Objective, arch: str, color: str
) -> None:
    done = [r for r in mine if r["state"] == "COMPLETE" and r[o.column] is not None]
    ax.plot([r["trial"] for r in done], [r[o.column] for r in done], "o", color=color, label=arch)
