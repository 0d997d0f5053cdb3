"""The trials of ``torchrec-ple tune``: each one a ``fit`` into ``DIR/trials/<arch>/<n>/``.

Runs in the ``tune`` process (``--jobs 1``) or in each of ``--jobs`` worker processes
(``python -m torchrec_ple.train.tune_worker RUN_JSON INDEX``) sharing the study's storage.
A worker takes the next trial under a file lock, so the budget of trials per architecture
is exact whatever the number of workers: queued retries first, then the architecture with
the fewest trials.

A trial's objective values are the validation metrics of its best epoch as the run
folder selects it (``train.select``), not of its last epoch. Pruning: Optuna's pruners do
not apply to several objectives, so a trial is stopped after an epoch (from
``tune.prune.warmup_epochs`` on) when its best epoch so far is worse on *every* objective
than the median of the completed trials of its architecture at the same epoch (a
completed trial shorter than that counts with its final values), once
``tune.prune.min_trials`` of them exist. A pruned trial keeps its run folder and values
(``user_attrs``) but is not on the Pareto front.
"""

from __future__ import annotations

import fcntl
import math
import os
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from torchrec_ple.spec.errors import DataError, SpecError
from torchrec_ple.spec.schema import Spec, TunePruneSpec
from torchrec_ple.train.select import best_entry
from torchrec_ple.train.tune_space import (
    Objective,
    base_spec,
    objectives,
    suggest,
    trial_spec,
    value_text,
)
from torchrec_ple.train.tune_study import (
    TRIALS_DIR,
    TuneRun,
    open_studies,
    requeue,
    require_optuna,
)

__all__ = ["Pruner", "curve", "main", "run_worker"]


def _values(validation: Dict[str, Any], objs: Sequence[Objective]) -> Optional[List[float]]:
    """The objectives' values in one epoch's validation metrics, or None if one is missing."""
    out = []
    for o in objs:
        v = validation.get(o.task, {}).get(o.metric)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        out.append(float(v))
    return out


def curve(history: List[Dict[str, Any]], spec: Spec, objs: Sequence[Objective]) -> List[Any]:
    """Per epoch, the objective values of the best epoch so far (``train.select``)."""
    assert spec.train.select is not None
    out = []
    for i in range(len(history)):
        best = best_entry(history[: i + 1], spec.train.select, spec.tasks)
        out.append(_values(best["validation"], objs) if best else None)
    return out


class Pruner:
    """The ``on_epoch_end`` of a trial's ``fit``: records its curve, stops a poor trial.

    Args:
        study (optuna.Study): the architecture's study.
        trial (optuna.Trial): the running trial.
        spec (Spec): the trial's spec (its ``train.select`` picks the best epoch).
        objs (Sequence[Objective]): the study's objectives.
        prune (Optional[TunePruneSpec]): the rule's settings; None: never stop.
    """

    def __init__(
        self,
        study: Any,
        trial: Any,
        spec: Spec,
        objs: Sequence[Objective],
        prune: Optional[TunePruneSpec],
    ) -> None:
        self._study, self._trial, self._spec = study, trial, spec
        self._objs, self._prune = list(objs), prune
        self.pruned_at: Optional[int] = None

    def __call__(self, epoch: int, history: List[Dict[str, Any]]) -> Optional[str]:
        points = curve(history, self._spec, self._objs)
        self._trial.set_user_attr("curve", points)  # live progress in the storage
        if self._prune is None or epoch < self._prune.warmup_epochs or points[-1] is None:
            return None
        optuna = require_optuna()
        done = self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        refs = [_at(t.user_attrs.get("curve"), len(points) - 1) for t in done]
        refs = [r for r in refs if r is not None]
        if len(refs) < self._prune.min_trials:
            return None
        medians = [statistics.median(r[i] for r in refs) for i in range(len(self._objs))]
        mine = points[-1]
        if all((v < m) if o.maximize else (v > m) for v, m, o in zip(mine, medians, self._objs)):
            self.pruned_at = epoch
            shown = ", ".join(f"{o.label} {m:.4f}" for o, m in zip(self._objs, medians))
            return (
                f"pruned by tune: worse on every objective than the median of {len(refs)} "
                f"completed trials at this epoch ({shown})"
            )
        return None


def _at(points: Any, epoch: int) -> Optional[List[float]]:
    """A completed trial's best-so-far values at ``epoch`` (its last ones if shorter)."""
    if not isinstance(points, list) or not points:
        return None
    return points[min(epoch, len(points) - 1)]


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _counted(t: Any, states: Any) -> bool:
    """Whether a trial uses the budget: all but waiting ones and interrupted failures."""
    if t.state == states.FAIL:
        return not t.user_attrs.get("interrupted")
    return t.state != states.WAITING


def next_trial(studies: Dict[str, Any], budget: int) -> Optional[Tuple[str, Any]]:
    """The next ``(architecture, optuna.Trial)`` to run, or None when the budget is spent:
    queued retries first, then the architecture with the fewest trials."""
    states = require_optuna().trial.TrialState
    best: Optional[Tuple[Tuple[bool, int], str]] = None
    for arch, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        used = sum(_counted(t, states) for t in trials)
        if used >= budget:
            continue
        key = (not any(t.state == states.WAITING for t in trials), used)
        if best is None or key < best[0]:
            best = (key, arch)
    if best is None:
        return None
    return best[1], studies[best[1]].ask()


def run_worker(run: TuneRun, worker: int, log: Callable[[str], None]) -> int:
    """Run trials until every architecture has its budget; returns how many ran here.

    Raises:
        DataError: a problem of the data or the folder, the same for every trial.
        KeyboardInterrupt: after queueing the running trial again.
    """
    base = base_spec(Path(run.spec_path), run.overrides)
    studies = open_studies(run, base, worker)
    ran = 0
    while True:
        with _flock(Path(run.out) / TRIALS_DIR / ".ask.lock"):
            picked = next_trial(studies, run.trials)
        if picked is None:
            return ran
        arch, trial = picked
        run_trial(run, base, arch, studies[arch], trial, log)
        ran += 1


def _silent(line: str) -> None:
    """A trial's fit lines go to its fit.log only."""


def run_trial(
    run: TuneRun, base: Spec, arch: str, study: Any, trial: Any, log: Callable[[str], None]
) -> str:
    """Fit one trial and tell the study its values; returns its final state's name."""
    from torchrec_ple.train import trainer
    from torchrec_ple.train.checkpoint import latest_checkpoint

    optuna = require_optuna()
    assert base.tune is not None
    t0 = time.perf_counter()
    for k, v in (("tune_dir", run.out), ("host", run.host), ("pid", os.getpid())):
        trial.set_user_attr(k, v)
    sampled = suggest(trial, base.tune.params)
    rel = trial.user_attrs.get("resume_dir") or f"{TRIALS_DIR}/{arch}/{trial.number:03d}"
    trial.set_user_attr("run_dir", rel)
    run_dir = Path(run.out) / rel
    resume = "resume_dir" in trial.user_attrs and latest_checkpoint(run_dir / "checkpoints")
    head = f"[{arch} #{trial.number}]"
    shown = ", ".join(f"{k}={value_text(v)}" for k, v in sampled)
    objs = objectives(base)
    try:
        spec = trial_spec(Path(run.spec_path), run.overrides, base, arch, sampled)
        pruner = Pruner(study, trial, spec, objs, base.tune.prune)
        metrics = trainer.fit(
            spec,
            run_dir,
            log=_silent,
            resume=bool(resume),
            overwrite=not resume,
            on_epoch_end=pruner,
        )
    except KeyboardInterrupt:
        requeue(study, trial, reason="Ctrl-C")
        raise
    except DataError as e:  # the data or the folder: every trial would fail alike
        _fail(study, trial, e, t0)
        raise
    except Exception as e:  # e.g. a sampled value the spec rejects, a diverging loss
        _fail(study, trial, e, t0)
        log(f"{head} failed: {_one_line(e)}; {shown}")
        return "FAIL"
    values = _record(trial, metrics, spec, objs, t0)
    if values is None:
        _fail(study, trial, RuntimeError("no validation metric at the best epoch"), t0)
        log(f"{head} failed: no validation metric at the best epoch; {shown}")
        return "FAIL"
    state = "pruned" if pruner.pruned_at is not None else "done"
    if pruner.pruned_at is not None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, values)
    got = ", ".join(f"{o.label} {v:.4f}" for o, v in zip(objs, values))
    best = metrics["best"]
    log(
        f"{head} {state}: {got} (best epoch {best['epoch']}, {len(metrics['history'])} epochs "
        f"trained, {time.perf_counter() - t0:.0f} s); {shown}"
    )
    return "PRUNED" if pruner.pruned_at is not None else "COMPLETE"


def _record(
    trial: Any, metrics: Dict[str, Any], spec: Spec, objs: Sequence[Objective], t0: float
) -> Optional[List[float]]:
    """Store a finished fit's facts on the trial; its objective values, or None."""
    history = metrics.get("history", [])
    best = metrics.get("best") or {}
    trial.set_user_attr("curve", curve(history, spec, objs))
    trial.set_user_attr("epochs_trained", len(history))
    trial.set_user_attr("best_epoch", best.get("epoch"))
    trial.set_user_attr("select_score", best.get("score"))
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
    trial.set_user_attr("parameters", metrics.get("model", {}).get("parameters"))
    values = _values(best.get("tasks", {}), objs)
    trial.set_user_attr("values", values)  # kept for pruned trials, which have no values
    early = (metrics.get("train") or {}).get("early_stopped") or {}
    if str(early.get("reason", "")).startswith("pruned by tune"):
        trial.set_user_attr("pruned_after_epoch", early.get("epoch"))
    return values


def _one_line(e: BaseException) -> str:
    text = (str(e).splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if not isinstance(e, (SpecError, DataError)) else text


def _fail(study: Any, trial: Any, e: BaseException, t0: float) -> None:
    optuna = require_optuna()
    trial.set_user_attr("error", _one_line(e))
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
    if os.environ.get("TORCHREC_PLE_DEBUG"):
        print(traceback.format_exc(), file=sys.stderr)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _die_with_parent() -> None:
    """Linux: end this worker when the ``tune`` process dies (even by ``kill -9``), so a
    re-run finds its trials abandoned, not still written to."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of a worker process: ``RUN_JSON INDEX``."""
    args = list(sys.argv[1:] if argv is None else argv)
    _die_with_parent()
    run = TuneRun.from_json(args[0])
    worker = int(args[1])
    from torchrec_ple.train import run_dir

    try:
        run_worker(run, worker, lambda line: print(line, flush=True))
        return 0
    except KeyboardInterrupt:
        return 130
    except (SpecError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        run_dir.release_all()


if __name__ == "__main__":
    raise SystemExit(main())
