"""``tune.md``: the search, each architecture's front and best trials, with their specs."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.tune_space import Objective, describe_space, value_text

__all__ = ["tune_markdown"]


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.4f}"


def _sets(row: Dict[str, Any]) -> str:
    """The trial's sampled values as ``--set`` arguments."""
    return " ".join(f"`{k}={value_text(v)}`" for k, v in row["params"].items()) or "—"


def _table(rows: List[Dict[str, Any]], objs: Sequence[Objective], first: str) -> List[str]:
    head = [first, "trial"] + [f"{o.label} {'↑' if o.maximize else '↓'}" for o in objs]
    head += ["best epoch", "epochs", "values (--set)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows:
        cells = [label, str(r["trial"])] + [_fmt(r[o.column]) for o in objs]
        cells += [str(r["best_epoch"]), str(r["epochs_trained"]), _sets(r)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _intro(result: Dict[str, Any], base: Spec, objs: Sequence[Objective]) -> List[str]:
    assert base.tune is not None
    prune = base.tune.prune
    rule = (
        "none"
        if prune is None
        else f"after epoch {prune.warmup_epochs} on, a trial stops when its best epoch so far "
        f"is worse on every objective than the median of the completed trials of its "
        f"architecture at the same epoch (once {prune.min_trials} exist)"
    )
    sets = ", ".join(f"`{o}`" for o in result["overrides"]) or "none"
    return [
        f"# Tune: `{result['spec']}`",
        "",
        f"Overrides: {sets}. Study `{result['study']}.<architecture>` in `{result['storage']}`; "
        f"{result['trials_per_architecture']} trials per architecture (TPE, multi-objective).",
        "",
        "Objectives (validation split, each task on its own sample space, at the trial's "
        "best epoch by train.select, not its last): "
        + ", ".join(f"{o.label} ({'max' if o.maximize else 'min'})" for o in objs)
        + f". Pruning: {rule}.",
        "",
        "Search space:",
        "",
        *[f"- `{line}`" for line in describe_space(base.tune.params)],
        "",
    ]


def tune_markdown(result: Dict[str, Any], base: Spec, objs: Sequence[Objective]) -> str:
    """The ``tune.md`` text of a :func:`~torchrec_ple.train.tune_report.write_report` result."""
    rows = result["trials"]
    by_key = {(r["architecture"], r["trial"]): r for r in rows}
    lines = _intro(result, base, objs)
    lines += ["| architecture | trials | complete | pruned | failed | interrupted | front | spec |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for arch, e in result["architectures"].items():
        front = ", ".join(map(str, e["front"])) or "—"
        spec = f"`{e['spec']}`" if e["spec"] else "—"
        lines.append(
            f"| {arch} | {e['trials']} | {e['complete']} | {e['pruned']} | {e['failed']} "
            f"| {e['interrupted']} "
            f"| {front} | {spec} |"
        )
    c = result["chosen"]
    lines.append("")
    if c is not None:
        r = by_key[(c["architecture"], c["trial"])]
        got = ", ".join(f"{o.label} {_fmt(r[o.column])}" for o in objs)
        lines.append(
            f"**Chosen** (`best.yaml`, the highest train.select score {_fmt(r['select_score'])}): "
            f"{c['architecture']} trial {c['trial']}: {got}; {_sets(r)}."
        )
    else:
        lines.append("No trial completed: nothing chosen.")
    lines += ["", "## Best trial per architecture and task", ""]
    best_rows = []
    for arch, e in result["architectures"].items():
        if e["chosen"] is not None:
            best_rows.append((f"{arch}: chosen", by_key[(arch, e["chosen"])]))
        for label, n in e["best_per_task"].items():
            if n is not None:
                best_rows.append((f"{arch}: best {label}", by_key[(arch, n)]))
    lines += _table(best_rows, objs, "architecture: for") if best_rows else ["none"]
    lines += ["", "## Pareto fronts", ""]
    front_rows = [(r["architecture"], r) for r in rows if r["pareto"]]
    lines += _table(front_rows, objs, "architecture") if front_rows else ["none"]
    failed = [r for r in rows if r["state"] == "FAIL"]
    retries = {
        (r["architecture"], r["retry_of"]): r["trial"] for r in rows if r["retry_of"] is not None
    }
    if failed:
        lines += ["", "## Failed and interrupted trials", ""]
    for r in failed:
        again = retries.get((r["architecture"], r["trial"]))
        what = f"`{r['error']}`" if r["error"] else f"interrupted ({r['interrupted']})"
        tail = f"; run again as #{again}, from its run folder" if again is not None else ""
        lines.append(f"- {r['architecture']} #{r['trial']}: {what}{tail}")
    if result.get("notes"):
        lines += ["", *[f"Note: {n}" for n in result["notes"]]]
    if result.get("plot"):
        lines += ["", f"![Pareto fronts]({result['plot']})"]
    lines += [
        "",
        "All trials: `trials.csv`; each trial's run folder: `trials/<architecture>/<n>/`.",
        "",
    ]
    return "\n".join(lines)
