"""``torchrec-ple tune``: search a spec's ``tune:`` space per architecture with Optuna.

Multi-objective: one objective per task (its validation AUC or MSE on its own sample space,
at the trial's best epoch), so each architecture gets its Pareto front of the tasks'
trade-off. Every trial is a ``fit`` into ``DIR/trials/<architecture>/<n>/`` with the
sampled values applied as ``--set`` applies them. The study lives in a real database
(``DIR/study.db``, or any Optuna storage URL): a killed ``tune`` run again continues it,
and ``--jobs J`` runs trials in J processes with the node's cores split between them.

Modules: :mod:`~torchrec_ple.train.tune_space` (space, objectives, a trial's spec),
:mod:`~torchrec_ple.train.tune_study` (folder, storage, resume),
:mod:`~torchrec_ple.train.tune_worker` (trials, pruning),
:mod:`~torchrec_ple.train.tune_report` (tune.md, pareto.png, best.yaml, trials.csv).

Example::

    torchrec-ple tune feature_specs/adult_tune.yaml --out runs/tune --trials 10 \\
        --architectures ple,mmoe,shared_bottom --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from torchrec_ple.spec.errors import SpecError

__all__ = ["add_tune_args", "run_tune", "tune"]


def add_tune_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``tune`` options (the spec and ``--set`` are added by the CLI)."""
    # a string, not a Path: Path("") is ".", and an empty --out must be refused
    parser.add_argument(
        "--out", required=True, help="tune folder (run again on it to continue the study)"
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per architecture (default: tune.trials)"
    )
    parser.add_argument(
        "--architectures",
        default=None,
        help="comma-separated architectures, one study each (default: tune.architectures, "
        "else model.architecture)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="trials in parallel processes (cores split)"
    )
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/study.db)"
    )
    parser.add_argument(
        "--study", default=None, help="study name prefix: <study>.<architecture> (default: tune)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier tune in --out (its studies, trials and reports)",
    )


def run_tune(args: argparse.Namespace) -> int:
    """The ``tune`` command: 0 when some trial completed, 1 when none did, 130 on Ctrl-C."""
    names = None
    if args.architectures is not None:
        from torchrec_ple.train.compare import parse_architectures

        names = parse_architectures(args.architectures)
    return tune(
        Path(args.spec),
        args.out,
        overrides=list(args.overrides),
        trials=args.trials,
        architectures=names,
        jobs=args.jobs,
        storage=args.storage,
        study=args.study,
        overwrite=args.overwrite,
    )


def _log(line: str) -> None:
    print(line, flush=True)


def tune(
    spec_path: Path,
    out: str,
    *,
    overrides: Optional[List[str]] = None,
    trials: Optional[int] = None,
    architectures: Optional[List[str]] = None,
    jobs: int = 1,
    storage: Optional[str] = None,
    study: Optional[str] = None,
    overwrite: bool = False,
    log: Callable[[str], None] = _log,
) -> int:
    """Run (or continue) the study of every architecture, then write the reports.

    Args:
        spec_path (Path): the spec, with a ``tune:`` block.
        out (str): the tune folder (``--out``).
        overrides (Optional[List[str]]): ``--set`` arguments, applied to every trial.
        trials (Optional[int]): trials per architecture. Default: ``tune.trials``.
        architectures (Optional[List[str]]): Default: ``tune.architectures``, else the
            spec's architecture.
        jobs (int): worker processes. Default: 1 (trials run in this process).
        storage (Optional[str]): Optuna storage URL. Default: the earlier tune's, else
            ``sqlite:///OUT/study.db``.
        study (Optional[str]): study name prefix. Default: the earlier tune's, else ``tune``.
        overwrite (bool): replace an earlier tune in ``out``. Default: False.
        log (Callable[[str], None]): progress lines.

    Returns:
        int: 0 when a trial completed, 1 when none did, 130 when interrupted.

    Raises:
        SpecError, DataError: one line, before any trial (bad spec, folder, storage).
    """
    if jobs < 1:
        raise SpecError("--jobs", "an int >= 1", str(jobs))
    if trials is not None and trials < 1:
        raise SpecError("--trials", "an int >= 1", str(trials))
    folder = Path(out)
    run, everything, base, lock = _open(
        spec_path,
        folder,
        list(overrides or []),
        trials,
        architectures,
        storage,
        study,
        overwrite,
        log,
    )
    log(_header(run, base, jobs))
    t0 = time.perf_counter()
    try:
        rc = _run_trials(run, jobs, log)
        result = _report(folder, everything, base, log)
    except KeyboardInterrupt:
        _report(folder, everything, base, log)
        log(
            f"interrupted after {time.perf_counter() - t0:.0f} s; the running trials are queued "
            f"again: run the same command to continue the study in {folder}"
        )
        return 130
    finally:
        lock.release()
    log(
        f"{time.perf_counter() - t0:.0f} s; wrote {folder}/tune.md, pareto.png, best.yaml, trials.csv"
    )
    if rc:
        return rc
    return 0 if result.get("chosen") else 1


def _open(
    spec_path: Path,
    folder: Path,
    overrides: List[str],
    trials: Optional[int],
    architectures: Optional[List[str]],
    storage: Optional[str],
    study: Optional[str],
    overwrite: bool,
    log: Callable[[str], None],
) -> Tuple[Any, Any, Any, Any]:
    """Check and lock the folder, load the spec, create or continue the studies.

    Returns:
        Tuple: this run's :class:`TuneRun`, the same over every architecture of the folder
        (for the record and the reports), the spec, and the folder's lock.
    """
    from torchrec_ple.train import tune_study as ts
    from torchrec_ple.train.run_dir import RunLock
    from torchrec_ple.train.tune_space import architectures as default_archs
    from torchrec_ple.train.tune_space import base_spec

    record = ts.prepare_folder(folder, spec_path, overwrite)  # before the spec or data
    ts.require_optuna()
    base = base_spec(spec_path, overrides)
    assert base.tune is not None
    earlier = record if record is not None and not overwrite else {}
    run = ts.TuneRun(
        spec_path=str(spec_path),
        overrides=overrides,
        out=str(folder.resolve()),
        storage=storage or earlier.get("storage") or ts.default_storage(folder),
        study=study or earlier.get("study") or "tune",
        architectures=default_archs(base, architectures),
        trials=trials or base.tune.trials,
    )
    # the record and the reports cover every architecture of the folder, this run's first
    known = [a for a in earlier.get("architectures", []) if a not in run.architectures]
    everything = dataclasses.replace(run, architectures=run.architectures + known)
    if earlier:
        _check_continuation(folder, base)
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)  # one tune at a time writes the folder
    try:
        if overwrite and record is not None:
            ts.remove_earlier(folder, ts.TuneRun(**{**record, "out": run.out}), log)
        elif not earlier:
            _refuse_foreign_studies(run)
        ts.write_record(folder, everything, base)
        (folder / ts.TRIALS_DIR).mkdir(exist_ok=True)
        ts.recover_interrupted(ts.open_studies(everything, base), run, log)
    except BaseException:
        lock.release()
        raise
    return run, everything, base, lock


def _check_continuation(folder: Path, base: Any) -> None:
    from torchrec_ple.train import tune_study as ts

    changed = ts.check_same_spec(folder, base)
    if changed:
        more = f"; {len(changed) - 6} more" if len(changed) > 6 else ""
        raise SpecError(
            file=str(folder / ts.SPEC_FILE),
            expected="the spec the study in this folder searches",
            found="; ".join(changed[:6]) + more,
            hint="only the budget, data paths and pruning may change; --overwrite starts a new "
            "study, or pick another --out",
        )


def _refuse_foreign_studies(run: Any) -> None:
    """A new tune must not continue a study of the same name that another tune started."""
    from torchrec_ple.train import tune_study as ts

    optuna = ts.require_optuna()
    names = set(optuna.get_all_study_names(ts.make_storage(run.storage)))
    taken = [run.study_name(a) for a in run.architectures if run.study_name(a) in names]
    if taken:
        raise SpecError(
            "--study",
            "a study name not yet in the storage (this folder holds no earlier tune)",
            ", ".join(taken),
            hint=f"pick another --study, or run tune on the folder that started {taken[0]}",
        )


def _header(run: Any, base: Any, jobs: int) -> str:
    from torchrec_ple.threads import available_cores
    from torchrec_ple.train.tune_space import objectives
    from torchrec_ple.train.tune_study import open_studies

    done = []
    for arch, s in open_studies(run, base).items():
        n = sum(t.state.name in ("COMPLETE", "PRUNED") for t in s.get_trials(deepcopy=False))
        done.append(f"{arch} {n}/{run.trials}")
    objs = ", ".join(f"{o.label} ({'max' if o.maximize else 'min'})" for o in objectives(base))
    threads = max(1, available_cores() // jobs)
    return (
        f"tune {run.spec_path}: {', '.join(run.architectures)} x {run.trials} trials; "
        f"objectives {objs}; study {run.study} in {run.storage}; {jobs} job(s) x "
        f"{threads} thread(s); done so far: {', '.join(done)}"
    )


def _run_trials(run: Any, jobs: int, log: Callable[[str], None]) -> int:
    """Run the trials here (one job) or in ``jobs`` worker processes; 0 or a worker's code."""
    from torchrec_ple.train.tune_worker import run_worker

    if jobs == 1:
        run_worker(run, 0, log)
        return 0
    from torchrec_ple.train.tune_study import worker_env

    env = worker_env(jobs)
    cmd = [sys.executable, "-m", "torchrec_ple.train.tune_worker", run.to_json()]
    procs = [subprocess.Popen(cmd + [str(i)], env=env) for i in range(jobs)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # the terminal's Ctrl-C reached them too; a `kill -INT` did not
            if p.poll() is None:
                p.send_signal(2)
        for p in procs:
            p.wait()
        raise
    bad = [c for c in codes if c != 0]
    if 130 in bad:
        raise KeyboardInterrupt
    return bad[0] if bad else 0


def _report(folder: Path, run: Any, base: Any, log: Callable[[str], None]) -> Dict[str, Any]:
    from torchrec_ple.train.tune_report import write_report

    result = write_report(folder, run, base, log)
    for arch, e in result["architectures"].items():
        log(
            f"{arch}: {e['complete']} complete, {e['pruned']} pruned, {e['failed']} failed, "
            f"{e['interrupted']} interrupted; "
            f"front: trials {', '.join(map(str, e['front'])) or '—'}; chosen: {e['chosen']}"
        )
    return result
