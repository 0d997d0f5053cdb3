"""``torchrec-ple compare``: train several architectures on the same data, budget and seeds.

Every architecture x seed is one :func:`~torchrec_ple.train.trainer.fit` run in
``OUT/<arch>/seed<s>/``; the data (``data.synthetic.seed``, files) is the same for all runs
and only ``train.seed`` varies (seed index ``s`` -> ``train.seed = base + s``). The summary
goes to ``OUT/compare.json``, ``OUT/compare.md`` and ``OUT/seesaw.png``. ``--sweep`` repeats
the whole comparison for every combination of values (``OUT/<label>/...``) and adds
``OUT/sweep.json`` and ``OUT/sweep.md``.

MTL gain (PLE paper, Eq. 11) of task ``k`` for architecture ``q``: ``M_q - M_single`` for AUC,
``M_single - M_q`` for MSE, on the means over seeds, so a positive gain is always better.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.spec import SpecError, load_spec
from torchrec_ple.spec.schema import ARCHITECTURES, Spec, TrainSpec

__all__ = ["add_compare_args", "run_compare", "compare", "parse_sweep", "COMPARE_JSON"]

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
SEESAW_PNG = "seesaw.png"
SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
GATED = ("mmoe", "ml_mmoe", "cgc", "ple")
_MMOE = ("mmoe", "ml_mmoe")

Override = Tuple[str, Any]


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` options (the spec and ``--set`` are added by the CLI)."""
    parser.add_argument(
        "--architectures",
        default="all",
        help="comma-separated architectures, or 'all' (default) for: " + ",".join(ARCHITECTURES),
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds per architecture: train.seed = base + s"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY.PATH=V1,V2,...",
        help="run the comparison for every value (YAML); repeatable: every combination",
    )
    parser.add_argument(
        "--match-experts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give mmoe/ml_mmoe shared_experts + tasks * task_experts experts, as many as "
        "cgc/ple have per level (default: on)",
    )
    parser.add_argument(
        "--drop-checkpoints",
        action="store_true",
        help="delete each run's checkpoint folder once it is evaluated (metrics stay)",
    )
    parser.add_argument(
        "--from-tune",
        type=Path,
        default=None,
        metavar="DIR",
        help="run each architecture tuned in DIR (torchrec-ple tune) with its chosen spec "
        "(DIR/best/<arch>.yaml), the others with SPEC; 'all' then means the tuned ones and "
        "single_task",
    )


def run_compare(args: argparse.Namespace) -> int:
    """The ``compare`` command: returns 0 when every run succeeded, 1 when some failed."""
    architectures = parse_architectures(args.architectures)
    if args.seeds < 1:
        raise SpecError("--seeds", "an int >= 1", str(args.seeds))
    sweeps = [parse_sweep(s) for s in args.sweep]
    overrides = list(getattr(args, "overrides", []) or [])
    kwargs: Dict[str, Any] = dict(
        seeds=args.seeds,
        match_experts=getattr(args, "match_experts", True),
        drop_checkpoints=getattr(args, "drop_checkpoints", False),
    )
    if getattr(args, "from_tune", None) is not None:
        from torchrec_ple.train.tune_report import tuned_specs

        kwargs["arch_specs"] = tuned_specs(args.from_tune)
        if args.architectures.strip() == "all":  # the tuned ones, against single_task
            wanted = set(kwargs["arch_specs"]) | {"single_task"}
            architectures = [a for a in ARCHITECTURES if a in wanted]
    if sweeps:
        result = run_sweep(args.spec, architectures, args.out, overrides, sweeps, **kwargs)
        failed = sum(p["compare"]["failed_runs"] for p in result["points"])
    else:
        result = compare(args.spec, architectures, args.out, overrides, **kwargs)
        failed = result["failed_runs"]
    if _is_main():
        print(f"wrote {args.out}" + (f" ({failed} failed runs)" if failed else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------- parsing


def parse_architectures(text: str) -> List[str]:
    """``"all"`` or a comma-separated list of names from ``ARCHITECTURES``."""
    if text.strip() == "all":
        return list(ARCHITECTURES)
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise SpecError("--architectures", "a comma-separated list or 'all'", repr(text))
    for a in names:
        if a not in ARCHITECTURES:
            import difflib

            close = difflib.get_close_matches(a, ARCHITECTURES, n=1)
            raise SpecError(
                "--architectures",
                "names from " + ", ".join(ARCHITECTURES),
                repr(a),
                did_you_mean=close[0] if close else None,
            )
    if len(set(names)) != len(names):
        raise SpecError("--architectures", "each name once", repr(text))
    return names


def _split_top_level(text: str) -> List[str]:
    # Split on commas outside [] and {} so `model.expert_dims=[32,16],[64,32]` works.
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def parse_sweep(text: str) -> Tuple[str, List[Any]]:
    """``"model.levels=1,2,3"`` -> ``("model.levels", [1, 2, 3])``; values are YAML."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise SpecError("--sweep", "KEY.PATH=V1,V2,...", repr(text))
    out = []
    for v in _split_top_level(values):
        try:
            out.append(yaml.safe_load(v))
        except yaml.YAMLError:
            raise SpecError("--sweep", f"YAML values for {key}", repr(v)) from None
    return key, out


def _value_text(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _label(point: Sequence[Override]) -> str:
    """A folder name for one sweep point: ``model.levels=2__tasks_1.weight.decay=0.999``."""
    parts = []
    for key, v in point:
        text = f"{key}={_value_text(v)}"
        parts.append(re.sub(r"[^A-Za-z0-9._=+-]+", "_", text.replace("]", "")))
    return "__".join(parts)


# --------------------------------------------------------------------------- running


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _run_overrides(spec: Spec, arch: str, seed_index: int, match_experts: bool) -> List[Override]:
    ov: List[Override] = [
        ("model.architecture", arch),
        ("train.seed", spec.train.seed + seed_index),
        ("train.progress", False),
    ]
    if match_experts and arch in _MMOE:
        m = spec.model
        n = m.shared_experts + len(spec.tasks) * m.task_experts
        ov.append(("model.shared_experts", max(n, 1)))
    return ov


def _base_spec(spec_path: Path, architectures: Sequence[str], overrides: List[Any]) -> Spec:
    """The spec shared by all runs, loaded as the first architecture it is valid for.

    Some settings are valid for only some architectures (``shared_experts=0`` for PLE with
    two levels); those runs fail alone. A spec no architecture accepts is an error.
    """
    first: Optional[SpecError] = None
    for arch in architectures:
        try:
            return load_spec(spec_path, overrides + [("model.architecture", arch)])
        except SpecError as e:
            first = first or e
    assert first is not None
    raise first


def _quiet_defaults() -> List[Override]:
    """Defaults for compare runs that the user's ``--set`` may still change."""
    fields = {f.name for f in dataclasses.fields(TrainSpec)}
    return [("train.tensorboard", False)] if "tensorboard" in fields else []


def _drop_checkpoints(run_dir: Path) -> None:
    from torchrec_ple.train import trainer

    for name in {getattr(trainer, "CHECKPOINT_DIR", "checkpoint"), "checkpoint", "checkpoints"}:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name, ignore_errors=True)


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


def _fit(spec: Spec, out_dir: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    # Looked up at call time so tests can substitute the trainer.
    from torchrec_ple.train import trainer

    # The runs under a comparison's --out belong to it: running the comparison again
    # replaces them, as it replaces compare.json (fit still removes an earlier run only
    # once the new run's data is read).
    return trainer.fit(spec, out_dir, log=log, overwrite=True)


def compare(
    spec_path: Path,
    architectures: Sequence[str],
    out: Path,
    overrides: Sequence[Any] = (),
    *,
    seeds: int = 1,
    match_experts: bool = True,
    drop_checkpoints: bool = False,
    arch_specs: Optional[Dict[str, Path]] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Fit every architecture x seed and write ``compare.json``, ``compare.md``, plots.

    Args:
        spec_path (Path): the YAML spec.
        architectures (Sequence[str]): names from ``ARCHITECTURES``.
        out (Path): output directory.
        overrides (Sequence[Any]): ``key=value`` strings or ``(key, value)`` pairs applied
            to every run.
        seeds (int): runs per architecture; run ``s`` uses ``train.seed = base + s``.
        match_experts (bool): give MMoE/ML-MMoE as many experts per level as CGC/PLE.
        drop_checkpoints (bool): delete each run's checkpoint folder after the run.
        arch_specs (Optional[Dict[str, Path]]): architecture -> its own spec (``tune``'s
            chosen one, run as it is: no expert matching) instead of ``spec_path``.
        log (Callable[[str], None]): progress lines.

    Returns:
        Dict[str, Any]: the content of ``compare.json``. A failed run is recorded there
        (``error``) and does not stop the others.
    """
    out = Path(out)
    base = _base_spec(spec_path, architectures, list(overrides))
    tasks = {t.name: t.type for t in base.tasks}
    result: Dict[str, Any] = {
        "spec": str(spec_path),
        "overrides": [
            o if isinstance(o, str) else f"{o[0]}={_value_text(o[1])}" for o in overrides
        ],
        "seeds": seeds,
        "train_seeds": [base.train.seed + s for s in range(seeds)],
        "data_seed": base.data.synthetic.seed if base.data.source == "synthetic" else None,
        "match_experts": match_experts,
        "from_tune": {a: str(p) for a, p in (arch_specs or {}).items() if a in architectures},
        "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
        "tasks": {
            n: {"type": k, "metric": _primary(k)[0], "higher_is_better": _primary(k)[1]}
            for n, k in tasks.items()
        },
        "architectures": {},
    }
    if _is_main():
        out.mkdir(parents=True, exist_ok=True)
    for arch in architectures:
        entry: Dict[str, Any] = {"runs": [], "errors": []}
        result["architectures"][arch] = entry
        for s in range(seeds):
            run_dir = out / arch / f"seed{s}"
            tuned = (arch_specs or {}).get(arch)
            ov = _run_overrides(base, arch, s, match_experts and tuned is None)
            entry["overrides"] = [f"{k}={_value_text(v)}" for k, v in ov if k != "train.seed"]
            run: Dict[str, Any] = {
                "seed": s,
                "train_seed": base.train.seed + s,
                "dir": str(run_dir),
            }
            t0 = time.perf_counter()
            try:
                spec = load_spec(tuned or spec_path, _quiet_defaults() + list(overrides) + ov)
                metrics = _fit(
                    spec, run_dir, log=lambda line, p=f"[{arch} seed{s}] ": log(p + line)
                )
                # the epoch train.select keeps (what evaluate/export serve), else the last
                best = metrics.get("best") or {}
                run.update(
                    tasks=best.get("tasks") or metrics["tasks"],
                    epoch=best.get("epoch"),
                    samples_per_second=metrics.get("train", {}).get("samples_per_second"),
                    train_seconds=metrics.get("train", {}).get("seconds"),
                    parameters=metrics.get("model", {}).get("parameters"),
                )
                missing = [t for t in tasks if t not in run["tasks"]]
                if missing:
                    raise RuntimeError(f"no validation metrics for tasks {missing}")
                if s == 0 and metrics.get("gates"):
                    entry["gates"] = metrics["gates"]
            except Exception as e:  # one failed run must not end the comparison
                run["error"] = f"{type(e).__name__}: {e}".strip()
                entry["errors"].append({"seed": s, "error": run["error"]})
                log(f"[{arch} seed{s}] FAILED: {run['error']}")
                if os.environ.get("TORCHREC_PLE_DEBUG"):
                    log(traceback.format_exc())
            run["wall_seconds"] = time.perf_counter() - t0
            if drop_checkpoints:
                _drop_checkpoints(run_dir)
            entry["runs"].append(run)
        _summarize_arch(entry, result["tasks"])
        log(_one_line(arch, entry, result["tasks"]))
        _finish(result, out, plots=False)
    _finish(result, out, plots=True)
    return result


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


def _finish(result: Dict[str, Any], out: Path, plots: bool) -> None:
    _add_gains(result)
    result["failed_runs"] = sum(len(e["errors"]) for e in result["architectures"].values())
    if not _is_main():
        return
    if plots:
        result["plots"] = _plots(result, out)
    write_text_atomic(out / COMPARE_JSON, json.dumps(result, indent=1, default=str))
    write_text_atomic(out / COMPARE_MD, compare_markdown(result))


def _plots(result: Dict[str, Any], out: Path) -> Dict[str, Any]:
    from torchrec_ple.train import plots

    written: Dict[str, Any] = {}
    try:
        if plots.plot_seesaw(result, out / SEESAW_PNG):
            written["seesaw"] = SEESAW_PNG
    except Exception as e:  # a plot must not lose the numbers
        written["seesaw_error"] = f"{type(e).__name__}: {e}"
    for arch, entry in result["architectures"].items():
        if entry.get("gates"):
            name = f"{arch}_gates.png"
            try:
                plots.plot_gates(
                    entry["gates"], out / name, title=f"{arch}: mean gate weights (seed 0)"
                )
                written[f"{arch}_gates"] = name
            except Exception as e:
                written[f"{arch}_gates_error"] = f"{type(e).__name__}: {e}"
    return written


# --------------------------------------------------------------------------- markdown


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


# --------------------------------------------------------------------------- sweeps


def run_sweep(
    spec_path: Path,
    architectures: Sequence[str],
    out: Path,
    overrides: Sequence[Any],
    sweeps: Sequence[Tuple[str, List[Any]]],
    *,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> Dict[str, Any]:
    """Run :func:`compare` for every combination of sweep values; write sweep.json/md.

    Args:
        spec_path (Path): the YAML spec.
        architectures (Sequence[str]): names from ``ARCHITECTURES``.
        out (Path): output directory; point ``p`` goes to ``out/<label of p>/``.
        overrides (Sequence[Any]): applied to every run, before the sweep values.
        sweeps (Sequence[Tuple[str, List[Any]]]): ``(key, values)`` pairs (see
            :func:`parse_sweep`).
        **kwargs: passed to :func:`compare` (``seeds``, ``match_experts``, ...).
    """
    out = Path(out)
    keys = [k for k, _ in sweeps]
    sweep: Dict[str, Any] = {
        "spec": str(spec_path),
        "overrides": [
            o if isinstance(o, str) else f"{o[0]}={_value_text(o[1])}" for o in overrides
        ],
        "sweep": {k: v for k, v in sweeps},
        "points": [],
    }
    for combo in itertools.product(*[v for _, v in sweeps]):
        point = list(zip(keys, combo))
        label = _label(point)
        log(f"== sweep point {label}")
        entry: Dict[str, Any] = {"label": label, "values": {k: v for k, v in point}}
        try:
            res = compare(
                spec_path, architectures, out / label, list(overrides) + point, log=log, **kwargs
            )
        except Exception as e:  # e.g. a sweep value the spec rejects for every architecture
            res = {
                "error": f"{type(e).__name__}: {e}",
                "failed_runs": len(architectures) * kwargs.get("seeds", 1),
            }
            log(f"== sweep point {label} FAILED: {res['error']}")
        entry["compare"] = _brief(res)
        sweep["points"].append(entry)
        if _is_main():
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / SWEEP_JSON, json.dumps(sweep, indent=1, default=str))
            write_text_atomic(out / SWEEP_MD, sweep_markdown(sweep))
    if _is_main():
        from torchrec_ple.train import plots

        try:
            if plots.plot_sweep_gains(sweep, out / "sweep_gains.png"):
                sweep["plot"] = "sweep_gains.png"
        except Exception as e:
            sweep["plot_error"] = f"{type(e).__name__}: {e}"
        write_text_atomic(out / SWEEP_JSON, json.dumps(sweep, indent=1, default=str))
        write_text_atomic(out / SWEEP_MD, sweep_markdown(sweep))
    return sweep


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
