"""The numbers and tables of a comparison: per-architecture summaries over seeds, MTL gains
against ``single_task``, and the ``compare.md`` / ``sweep.md`` tables.

Pure functions of the result dicts that :mod:`torchrec_ple.train.compare` builds.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple


def _value_text(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _primary(kind: str) -> Tuple[str, bool]:
    """The summary metric of a task type and whether higher is better."""
    return ("auc", True) if kind == "binary" else ("mse", False)


def _stats(values: List[float]) -> Dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": values}
    n = len(finite)
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": mean,
        "std": std,
        "min": min(finite),
        "max": max(finite),
        "n": n,
        "values": values,
    }


def _summarize_arch(entry: Dict[str, Any], tasks: Dict[str, Dict[str, Any]]) -> None:
    ok = [r for r in entry["runs"] if "error" not in r]
    entry["status"] = "ok" if len(ok) == len(entry["runs"]) else ("partial" if ok else "failed")
    entry["tasks"] = {}
    for name, t in tasks.items():
        values = [
            r["tasks"][name].get(t["metric"]) if "error" not in r else None for r in entry["runs"]
        ]
        entry["tasks"][name] = {"metric": t["metric"], **_stats(values)}
    sps = [r["samples_per_second"] for r in ok if r.get("samples_per_second")]
    entry["samples_per_second"] = sum(sps) / len(sps) if sps else None
    params = [r["parameters"] for r in ok if r.get("parameters") is not None]
    entry["parameters"] = params[0] if params else None


def _one_line(arch: str, entry: Dict[str, Any], tasks: Dict[str, Dict[str, Any]]) -> str:
    parts = [f"{arch}:"]
    for name, t in tasks.items():
        s = entry["tasks"][name]
        if s["mean"] is not None:
            parts.append(f"{name} {t['metric']}={s['mean']:.4f}±{s['std']:.4f}")
    if entry["errors"]:
        parts.append(f"({len(entry['errors'])} failed)")
    return " ".join(parts)


def _add_gains(result: Dict[str, Any]) -> None:
    archs = result["architectures"]
    ref = archs.get("single_task")
    ref_ok = ref is not None and all(s["mean"] is not None for s in ref["tasks"].values())
    result["gains"] = bool(ref_ok)
    if ref is None:
        result["gains_note"] = "single_task is not among the architectures: no MTL gains"
    elif not ref_ok:
        result["gains_note"] = "single_task failed on some task: no MTL gains"
    else:
        result["gains_note"] = (
            "gain = metric - single_task's for AUC, single_task's - metric for MSE"
        )
    winners = []
    for arch, entry in archs.items():
        all_ok = True
        for name, t in result["tasks"].items():
            s = entry["tasks"][name]
            gain = None
            if ref_ok and s["mean"] is not None:
                diff = s["mean"] - ref["tasks"][name]["mean"]
                gain = (diff if t["higher_is_better"] else -diff) + 0.0  # no -0.0
            s["gain"] = gain
            all_ok = all_ok and gain is not None and gain >= 0
        if ref_ok and all_ok and arch != "single_task":
            winners.append(arch)
    result["non_negative_gain"] = winners if ref_ok else None


def _fmt(v: Optional[float], digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _fmt_gain(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:+.4f}"


def compare_markdown(result: Dict[str, Any]) -> str:
    """The ``compare.md`` table: architecture x task ``mean ± std`` and gain."""
    tasks = result["tasks"]
    lines = [
        f"# Architecture comparison: `{result['spec']}`",
        "",
        f"Overrides: {', '.join(f'`{o}`' for o in result['overrides']) or 'none'}. "
        f"Seeds: {result['seeds']} (train.seed {', '.join(map(str, result['train_seeds']))}; "
        "same data for every run). Metric: mean ± sample std over seeds, of the epoch "
        "train.select keeps where a spec has it, else of the last epoch. "
        + (
            "MMoE/ML-MMoE get as many experts per level as CGC/PLE."
            if result["match_experts"]
            else ""
        ),
        "",
    ]
    if result.get("from_tune"):
        tuned = ", ".join(f"{a} `{p}`" for a, p in result["from_tune"].items())
        lines += [f"Tuned specs (`--from-tune`, run as chosen by tune): {tuned}.", ""]
    head = ["architecture", "params", "samples/s"]
    for name, t in tasks.items():
        arrow = "↑" if t["higher_is_better"] else "↓"
        head += [f"{name} {t['metric']} {arrow}", f"{name} gain"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch, e in result["architectures"].items():
        row = [arch + (" (failed)" if e["status"] == "failed" else "")]
        row.append(str(e["parameters"]) if e.get("parameters") is not None else "—")
        row.append(f"{e['samples_per_second']:.0f}" if e.get("samples_per_second") else "—")
        for name in tasks:
            s = e["tasks"][name]
            cell = "—" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
            if s["mean"] is not None and s["n"] < result["seeds"]:
                cell += f" (n={s['n']})"
            row += [
                cell,
                "ref"
                if arch == "single_task" and s.get("gain") is not None
                else _fmt_gain(s.get("gain")),
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if result["gains"]:
        winners = result["non_negative_gain"]
        lines.append(
            "Non-negative MTL gain on every task: "
            + (", ".join(winners) if winners else "none")
            + " (differences of means: read them against the std over seeds)."
        )
    else:
        lines.append(f"MTL gains omitted: {result['gains_note']}.")
    errors = [(a, x) for a, e in result["architectures"].items() for x in e["errors"]]
    if errors:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {a} seed{x['seed']}: `{x['error']}`" for a, x in errors]
    plots = result.get("plots", {})
    if plots.get("seesaw"):
        lines += ["", f"![seesaw]({plots['seesaw']})"]
    lines.append("")
    return "\n".join(lines)


def _brief(res: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a compare result a sweep table needs."""
    if "error" in res:
        return {"error": res["error"], "failed_runs": res["failed_runs"], "architectures": {}}
    archs = {}
    for arch, e in res["architectures"].items():
        archs[arch] = {
            "status": e["status"],
            "parameters": e.get("parameters"),
            "errors": e["errors"],
            "tasks": {
                n: {k: s.get(k) for k in ("metric", "mean", "std", "n", "gain")}
                for n, s in e["tasks"].items()
            },
        }
    return {
        "tasks": res["tasks"],
        "architectures": archs,
        "gains": res["gains"],
        "non_negative_gain": res["non_negative_gain"],
        "failed_runs": res["failed_runs"],
    }


def sweep_markdown(sweep: Dict[str, Any]) -> str:
    """The ``sweep.md`` table: rows are sweep values x architecture."""
    keys = list(sweep["sweep"])
    tasks: Dict[str, Any] = {}
    for p in sweep["points"]:
        tasks.update(p["compare"].get("tasks", {}))
    lines = [
        f"# Sweep: `{sweep['spec']}`",
        "",
        f"Overrides: {', '.join(f'`{o}`' for o in sweep['overrides']) or 'none'}. "
        "Metric: mean ± sample std over seeds; gain vs single_task (positive = better).",
        "",
    ]
    head = list(keys) + ["architecture"]
    for name, t in tasks.items():
        arrow = "↑" if t["higher_is_better"] else "↓"
        head += [f"{name} {t['metric']} {arrow}", f"{name} gain"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for p in sweep["points"]:
        vals = [_value_text(p["values"][k]) for k in keys]
        c = p["compare"]
        if "error" in c:
            lines.append("| " + " | ".join(vals + ["(all)"] + ["—"] * (2 * len(tasks))) + " |")
            notes.append(f"- {p['label']}: `{c['error']}`")
            continue
        for arch, e in c["architectures"].items():
            row = vals + [arch]
            for name in tasks:
                s = e["tasks"].get(name, {})
                row.append("—" if s.get("mean") is None else f"{s['mean']:.4f} ± {s['std']:.4f}")
                g = s.get("gain")
                row.append("ref" if arch == "single_task" and g is not None else _fmt_gain(g))
            lines.append("| " + " | ".join(row) + " |")
            notes += [f"- {p['label']} {arch} seed{x['seed']}: `{x['error']}`" for x in e["errors"]]
    lines.append("")
    for p in sweep["points"]:
        c = p["compare"]
        if c.get("gains"):
            w = c["non_negative_gain"]
            lines.append(
                f"- {p['label']}: non-negative gain on every task: {', '.join(w) if w else 'none'}"
            )
    if notes:
        lines += ["", "## Failed runs", ""] + notes
    if sweep.get("plot"):
        lines += ["", f"![gains]({sweep['plot']})"]
    lines.append("")
    return "\n".join(lines)
