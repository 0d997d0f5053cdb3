"""What ``torchrec-ple tune`` writes from its studies: ``trials.csv``, ``tune.json``,
``tune.md``, ``pareto.png``, ``best.yaml`` and ``best/<architecture>.yaml``.

Everything is read back from the storage (the trials' values and ``user_attrs``), so the
report of a continued or parallel study covers every trial, whichever process ran it.

The chosen trial of an architecture is its completed trial with the highest
``train.select`` score at its best epoch (the trials' own best-epoch rule: the spec's
``train.select``, else the equal-weight sum of the objectives); ``best.yaml`` is the chosen
trial over all architectures. Its spec is the one the trial's run folder was trained with
(``spec.yaml``), so ``fit best.yaml`` trains it again.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.tune_space import Objective, decode_params, objectives, value_text
from torchrec_ple.train.tune_study import TuneRun, open_studies, require_optuna

__all__ = ["collect", "tuned_specs", "write_report", "TUNE_JSON"]

TUNE_JSON = "tune.json"
TUNE_MD = "tune.md"
TRIALS_CSV = "trials.csv"
PARETO_PNG = "pareto.png"
BEST_YAML = "best.yaml"
BEST_DIR = "best"


def _row(arch: str, t: Any, base: Spec, objs: Sequence[Objective], front: set) -> Dict[str, Any]:
    """One trial as a flat record."""
    assert base.tune is not None
    ua = t.user_attrs
    values = t.values if t.values is not None else ua.get("values")
    row: Dict[str, Any] = {
        "architecture": arch,
        "trial": t.number,
        "state": t.state.name,
        "pareto": t.number in front,
    }
    for i, o in enumerate(objs):
        row[o.column] = values[i] if values else None
    row.update(
        select_score=ua.get("select_score"),
        best_epoch=ua.get("best_epoch"),
        epochs_trained=ua.get("epochs_trained"),
        pruned_after_epoch=ua.get("pruned_after_epoch"),
        seconds=ua.get("seconds"),
        parameters=ua.get("parameters"),
        run_dir=ua.get("run_dir"),
        retry_of=ua.get("retry_of"),
        error=ua.get("error"),
        interrupted=ua.get("interrupted"),
    )
    row["params"] = {k: v for k, v in decode_params(t.params, base.tune.params)}
    return row


def collect(studies: Dict[str, Any], base: Spec) -> List[Dict[str, Any]]:
    """Every trial of every architecture's study, in architecture and trial order."""
    optuna = require_optuna()
    objs = objectives(base)
    rows = []
    for arch, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        front = {t.number for t in study.best_trials} if done else set()
        for t in study.get_trials(deepcopy=False):
            if t.state.name != "WAITING":
                rows.append(_row(arch, t, base, objs, front))
    return rows


def _complete(rows: List[Dict[str, Any]], arch: Optional[str] = None) -> List[Dict[str, Any]]:
    return [
        r for r in rows if r["state"] == "COMPLETE" and (arch is None or r["architecture"] == arch)
    ]


def _chosen(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The completed trial with the highest select score (the earliest of ties)."""
    scored = [r for r in _complete(rows) if r["select_score"] is not None]
    return max(scored, key=lambda r: r["select_score"]) if scored else None


def _best_for(rows: List[Dict[str, Any]], o: Objective) -> Optional[Dict[str, Any]]:
    done = [r for r in _complete(rows) if r[o.column] is not None]
    if not done:
        return None
    sign = 1 if o.maximize else -1
    return max(done, key=lambda r: sign * r[o.column])


def _summary(rows: List[Dict[str, Any]], run: TuneRun, objs: Sequence[Objective]) -> Dict[str, Any]:
    archs: Dict[str, Any] = {}
    for arch in run.architectures:
        mine = [r for r in rows if r["architecture"] == arch]
        counts = {s: sum(r["state"] == s for r in mine) for s in ("COMPLETE", "PRUNED")}
        interrupted = sum(bool(r["state"] == "FAIL" and r["interrupted"]) for r in mine)
        counts["FAIL"] = sum(r["state"] == "FAIL" for r in mine) - interrupted
        chosen = _chosen(mine)
        archs[arch] = {
            "trials": len(mine),
            "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"],
            "failed": counts["FAIL"],
            "interrupted": interrupted,  # failed by a kill or Ctrl-C, run again as a retry
            "front": [r["trial"] for r in mine if r["pareto"]],
            "chosen": chosen["trial"] if chosen else None,
            "spec": f"{BEST_DIR}/{arch}.yaml" if chosen else None,
            "best_per_task": {
                o.label: (b["trial"] if (b := _best_for(mine, o)) else None) for o in objs
            },
        }
    overall = _chosen(rows)
    return {
        "architectures": archs,
        "chosen": (
            {"architecture": overall["architecture"], "trial": overall["trial"], "spec": BEST_YAML}
            if overall
            else None
        ),
    }


def _copy_spec(out: Path, row: Dict[str, Any], dest: Path) -> Optional[str]:
    """Copy a trial's trained spec to ``dest``; an error text when its folder is gone."""
    src = out / str(row["run_dir"]) / "spec.yaml"
    if not src.is_file():
        return f"{src} is missing"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return None


def _write_csv(path: Path, rows: List[Dict[str, Any]], objs: Sequence[Objective]) -> None:
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["architecture", "trial", "state", "pareto"] + [o.column for o in objs]
    head += ["select_score", "best_epoch", "epochs_trained", "pruned_after_epoch", "seconds"]
    head += ["parameters"] + keys + ["run_dir", "retry_of", "interrupted", "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        flat = {**r, **{k: value_text(v) for k, v in r["params"].items()}}
        w.writerow(["" if flat.get(k) is None else flat.get(k) for k in head])
    write_text_atomic(path, buf.getvalue())


def write_report(
    out: Path, run: TuneRun, base: Spec, log: Callable[[str], None] = print
) -> Dict[str, Any]:
    """Write every output of the tune in ``out`` from its studies; returns ``tune.json``."""
    from torchrec_ple.train.tune_markdown import tune_markdown
    from torchrec_ple.train.tune_plot import plot_pareto

    objs = objectives(base)
    studies = open_studies(run, base)
    rows = collect(studies, base)
    result: Dict[str, Any] = {
        "spec": run.spec_path,
        "overrides": run.overrides,
        "storage": run.storage,
        "study": run.study,
        "trials_per_architecture": run.trials,
        "objectives": [{"task": o.task, "metric": o.metric, "maximize": o.maximize} for o in objs],
        **_summary(rows, run, objs),
        "trials": rows,
    }
    notes = []
    for arch, entry in result["architectures"].items():
        if entry["chosen"] is not None:
            row = next(
                r for r in rows if r["architecture"] == arch and r["trial"] == entry["chosen"]
            )
            problem = _copy_spec(out, row, out / BEST_DIR / f"{arch}.yaml")
            if problem:
                entry["spec"] = None
                notes.append(f"{arch}: no best/{arch}.yaml ({problem})")
    if result["chosen"] is not None:
        c = result["chosen"]
        row = next(
            r for r in rows if r["architecture"] == c["architecture"] and r["trial"] == c["trial"]
        )
        problem = _copy_spec(out, row, out / BEST_YAML)
        if problem:
            c["spec"] = None
            notes.append(f"no best.yaml ({problem})")
    result["notes"] = notes
    try:
        result["plot"] = PARETO_PNG if plot_pareto(rows, run, objs, out / PARETO_PNG) else None
    except Exception as e:  # a plot must not lose the numbers
        result["plot"] = None
        notes.append(f"pareto.png: {type(e).__name__}: {e}")
    _write_csv(out / TRIALS_CSV, rows, objs)
    write_text_atomic(out / TUNE_JSON, json.dumps(result, indent=1, default=str))
    write_text_atomic(out / TUNE_MD, tune_markdown(result, base, objs))
    for line in notes:
        log(f"note: {line}")
    return result


def tuned_specs(folder: Path) -> Dict[str, Path]:
    """``compare --from-tune``: architecture -> its chosen spec in a tune folder.

    Raises:
        DataError: the folder has no ``tune.json`` or no chosen spec.
    """
    from torchrec_ple.spec.errors import DataError

    path = Path(folder) / TUNE_JSON
    try:
        result = json.loads(path.read_text())
        archs = result["architectures"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            file=str(path),
            expected="the tune.json of a torchrec-ple tune folder",
            found="a missing or unreadable file",
        ) from None
    specs = {a: Path(folder) / e["spec"] for a, e in archs.items() if e.get("spec")}
    specs = {a: p for a, p in specs.items() if p.is_file()}
    if not specs:
        raise DataError(
            file=str(folder),
            expected="a tune with a completed trial (best/<architecture>.yaml)",
            found="none",
        )
    return specs
