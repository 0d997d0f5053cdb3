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
import os
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.registry import HEADS
from torchrec_ple.spec import SpecError, load_spec
from torchrec_ple.spec.schema import Spec, TrainSpec
from torchrec_ple.train.compare_report import (
    _add_gains,
    _brief,
    _one_line,
    _primary,
    _summarize_arch,
    _value_text,
    compare_markdown,
    sweep_markdown,
)

__all__ = ["add_compare_args", "run_compare", "compare", "parse_sweep", "COMPARE_JSON"]

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
SEESAW_PNG = "seesaw.png"
SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"

Override = Tuple[str, Any]


class _ArchitecturesHelp(str):
    """Help text that lists the registered heads only when the help is printed: listing
    them imports every head (and torch), which ``--help`` and other commands need not."""

    def __mod__(self, params: Any) -> str:
        return str.__mod__(str(self) + ",".join(HEADS.names()), params)


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` options (the spec and ``--set`` are added by the CLI)."""
    parser.add_argument(
        "--architectures",
        default="all",
        help=_ArchitecturesHelp("comma-separated architectures, or 'all' (default) for: "),
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
            architectures = [a for a in HEADS.names() if a in wanted]
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
    """``"all"`` or a comma-separated list of names registered in ``HEADS``."""
    known = HEADS.names()
    if text.strip() == "all":
        return known
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise SpecError("--architectures", "a comma-separated list or 'all'", repr(text))
    for a in names:
        if a not in known:
            import difflib

            close = difflib.get_close_matches(a, known, n=1)
            raise SpecError(
                "--architectures",
                "names from " + ", ".join(known),
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
    head = HEADS.find(arch)  # an unknown name fails in its run, as a spec error
    if match_experts and head is not None:  # e.g. MMoE: as many experts as CGC/PLE have
        ov += head.matching_overrides(spec.model, len(spec.tasks))
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
        architectures (Sequence[str]): names registered in ``HEADS``.
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
    result = _new_result(
        spec_path, base, architectures, overrides, seeds, match_experts, arch_specs
    )
    if _is_main():
        out.mkdir(parents=True, exist_ok=True)
    for arch in architectures:
        entry: Dict[str, Any] = {"runs": [], "errors": []}
        result["architectures"][arch] = entry
        tuned = (arch_specs or {}).get(arch)
        for s in range(seeds):
            ov = _run_overrides(base, arch, s, match_experts and tuned is None)
            entry["overrides"] = [f"{k}={_value_text(v)}" for k, v in ov if k != "train.seed"]
            run_dir = out / arch / f"seed{s}"
            spec_s = (tuned or spec_path, _quiet_defaults() + list(overrides) + ov)
            run = _run_one(base, arch, s, run_dir, spec_s, result["tasks"], entry, log)
            if drop_checkpoints:
                _drop_checkpoints(run_dir)
            entry["runs"].append(run)
        _summarize_arch(entry, result["tasks"])
        log(_one_line(arch, entry, result["tasks"]))
        _finish(result, out, plots=False)
    _finish(result, out, plots=True)
    return result


def _new_result(
    spec_path: Path,
    base: Spec,
    architectures: Sequence[str],
    overrides: Sequence[Any],
    seeds: int,
    match_experts: bool,
    arch_specs: Optional[Dict[str, Path]],
) -> Dict[str, Any]:
    """What ``compare.json`` says before any run: the settings and the tasks' metrics."""
    tasks = {t.name: t.type for t in base.tasks}
    return {
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


def _run_one(
    base: Spec,
    arch: str,
    s: int,
    run_dir: Path,
    spec_source: Tuple[Path, List[Any]],
    tasks: Dict[str, Dict[str, Any]],
    entry: Dict[str, Any],
    log: Callable[[str], None],
) -> Dict[str, Any]:
    """One architecture x seed run: its summary, or its error (also added to ``entry``).

    Args:
        spec_source (Tuple[Path, List[Any]]): the spec file and the overrides of the run.
    """
    run: Dict[str, Any] = {"seed": s, "train_seed": base.train.seed + s, "dir": str(run_dir)}
    t0 = time.perf_counter()
    try:
        spec = load_spec(*spec_source)
        metrics = _fit(spec, run_dir, log=lambda line, p=f"[{arch} seed{s}] ": log(p + line))
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
    return run


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
        architectures (Sequence[str]): names registered in ``HEADS``.
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
