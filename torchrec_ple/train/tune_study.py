"""The folder and the Optuna studies of ``torchrec-ple tune``.

``--out DIR`` follows ``fit``'s folder rules (:mod:`torchrec_ple.train.run_dir`): the
argument is checked before any work, one ``tune`` at a time writes the folder (its
``fit.lock``), and a folder holding anything else is refused unless ``--overwrite``. A
folder that holds an earlier tune is continued: the same storage and study names, the
same spec (``tune_spec.yaml``; only the budget, data paths and pruning may change), and
the trials a killed ``tune`` left running are marked failed and queued again, resuming
their run folder from its newest checkpoint. ``--overwrite`` deletes the earlier tune's
studies and files (never other files in the folder) before the first new trial.

One study per architecture, ``<study>.<architecture>``, in ``sqlite:///DIR/study.db``
unless ``--storage`` names another Optuna storage.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.spec.errors import DataError, SpecError
from torchrec_ple.spec.schema import Spec

__all__ = [
    "TuneRun",
    "open_studies",
    "prepare_folder",
    "recover_interrupted",
    "require_optuna",
    "RUN_FILE",
]

STUDY_DB = "study.db"
RUN_FILE = "tune_run.json"  # how the study was started: storage, study name, spec
SPEC_FILE = "tune_spec.yaml"  # the resolved spec the study searches
TRIALS_DIR = "trials"
# Everything tune writes at the top of DIR (--overwrite removes these and nothing else).
OWN_FILES = (
    STUDY_DB,
    RUN_FILE,
    SPEC_FILE,
    TRIALS_DIR,
    "tune.md",
    "tune.json",
    "trials.csv",
    "pareto.png",
    "best.yaml",
    "best",
)
# Keys that may differ when a study is continued: the budget, where the (same) data now
# lives, how trials are pruned and logged.
_CONTINUABLE = (
    "tune.trials",
    "tune.architectures",
    "tune.prune",
    "data.train.path",
    "data.validation.path",
    "train.progress",
    "train.num_threads",
    "data.num_workers",
)


@dataclass
class TuneRun:
    """What every worker of one ``tune`` needs (JSON-serialisable, passed to processes).

    Args:
        spec_path (str): the user's spec.
        overrides (List[str]): the user's ``--set`` arguments.
        out (str): the tune folder (absolute).
        storage (str): the Optuna storage URL.
        study (str): the study name prefix.
        architectures (List[str]): one study each.
        trials (int): trials per architecture.
    """

    spec_path: str
    overrides: List[str]
    out: str
    storage: str
    study: str
    architectures: List[str]
    trials: int
    host: str = field(default_factory=socket.gethostname)

    def study_name(self, arch: str) -> str:
        """``tune.ple``."""
        return f"{self.study}.{arch}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TuneRun:
        return cls(**json.loads(text))


def require_optuna() -> Any:
    """The ``optuna`` module, or a one-line error saying how to install the extra."""
    try:
        import optuna
    except ImportError:
        raise SpecError(
            "tune",
            "the tune extra installed (pip install -r requirements/tune.txt)",
            "no module optuna",
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(out: Path) -> str:
    """``sqlite:////abs/DIR/study.db``."""
    return f"sqlite:///{(Path(out) / STUDY_DB).resolve()}"


def make_storage(url: str) -> Any:
    """An Optuna RDB storage; SQLite waits for a writer of another worker (60 s)."""
    optuna = require_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # SQLAlchemy raises many types; the user needs one line
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise SpecError(
            "--storage", "an Optuna storage URL (e.g. sqlite:///study.db)", first
        ) from None


def _is_tune_folder(out: Path) -> bool:
    return (out / RUN_FILE).is_file() or (out / SPEC_FILE).is_file()


def prepare_folder(out: Path, spec_path: Path, overwrite: bool) -> Optional[Dict[str, Any]]:
    """Check ``--out`` before any work: the earlier tune's record (to continue, or to
    replace with ``--overwrite``), or None for a new folder.

    Raises:
        DataError: the folder is unusable, or holds other files (without ``--overwrite``).
    """
    from torchrec_ple.train.run_dir import check_out_arg

    earlier = out.is_dir() and _is_tune_folder(out)
    check_out_arg(str(out), spec_path, resume=earlier)
    if earlier:
        try:
            return json.loads((out / RUN_FILE).read_text())
        except (OSError, ValueError):
            if not overwrite:
                raise DataError(
                    file=str(out / RUN_FILE),
                    expected="the record of the earlier tune in this folder",
                    found="a missing or unreadable file",
                    hint="--overwrite starts a new study there",
                ) from None
    others = (
        sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES) if out.is_dir() else []
    )
    others = [n for n in others if n not in ("fit.lock",)]
    if others and not overwrite:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise DataError(
            file=str(out),
            expected="an empty folder or an earlier tune's folder (run again to continue it)",
            found=f"other files: {shown}",
            hint="pick another --out, or --overwrite to write beside them",
        )
    return None


def check_same_spec(out: Path, base: Spec) -> List[str]:
    """The keys where ``base`` differs from the spec the study in ``out`` searches."""
    from torchrec_ple.train.run_dir import _diff, _resolved  # the resume check of fit

    saved = out / SPEC_FILE
    if not saved.is_file():
        return []
    run = yaml.safe_load(saved.read_text(encoding="utf-8"))
    found: List[Any] = []
    _diff(run, json.loads(json.dumps(_resolved(base), default=str)), "", found)
    keep = []
    for key, what in found:
        if not any(key == k or key.startswith(k + ".") for k in _CONTINUABLE):
            keep.append(f"{key}: {what}")
    return keep


def write_record(out: Path, run: TuneRun, base: Spec) -> None:
    """``tune_run.json`` and ``tune_spec.yaml`` (the resolved spec, checked on re-runs)."""
    from torchrec_ple.train.run_dir import _resolved

    resolved = json.loads(json.dumps(_resolved(base), default=str))
    write_text_atomic(out / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))
    write_text_atomic(out / RUN_FILE, json.dumps(asdict(run), indent=1))


def remove_earlier(out: Path, run: TuneRun, log: Any) -> None:
    """``--overwrite``: delete the earlier tune's studies and files (nothing else)."""
    optuna = require_optuna()
    storage = make_storage(run.storage)
    gone = []
    for name in optuna.get_all_study_names(storage):
        if name.startswith(run.study + "."):
            optuna.delete_study(study_name=name, storage=storage)
            gone.append(name)
    for name in OWN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() and name != STUDY_DB:
            p.unlink()
    if gone:
        log(f"--overwrite: deleted the earlier studies {', '.join(gone)} and their trials")


def _sampler(base: Spec, worker: int, done: int) -> Any:
    optuna = require_optuna()
    assert base.tune is not None
    # Seeded per worker and per start: a continued study does not replay its first draws.
    seed = base.tune.seed + 1000 * worker + done
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=base.tune.startup_trials, multivariate=True
    )


def open_studies(run: TuneRun, base: Spec, worker: int = 0) -> Dict[str, Any]:
    """Create or load the study of every architecture (``load_if_exists``)."""
    import warnings

    from torchrec_ple.train.tune_space import objectives

    optuna = require_optuna()
    storage = make_storage(run.storage)
    directions = ["maximize" if o.maximize else "minimize" for o in objectives(base)]
    studies = {}
    for arch in run.architectures:
        name = run.study_name(arch)
        with warnings.catch_warnings():  # multivariate TPE is "experimental"
            warnings.simplefilter("ignore")
            done = 0
            try:
                done = len(optuna.load_study(study_name=name, storage=storage).trials)
            except KeyError:
                pass
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=directions,
                sampler=_sampler(base, worker, done),
                load_if_exists=True,
            )
        found = [d.name.lower() for d in study.directions]
        if found != directions:
            raise SpecError(
                "tune.objectives",
                f"the directions of study {name} ({', '.join(found)})",
                ", ".join(directions),
                hint="--overwrite starts a new study, or pick another --study",
            )
        studies[arch] = study
    return studies


def recover_interrupted(studies: Dict[str, Any], run: TuneRun, log: Any) -> int:
    """Mark the trials a killed ``tune`` of this folder left running as failed and queue
    them again (their run folder resumes from its newest checkpoint). Returns the count.

    Only trials of this folder and host are touched: the caller holds the folder's lock,
    so no live worker of it can own them.
    """
    optuna = require_optuna()
    running = optuna.trial.TrialState.RUNNING
    n = 0
    for arch, study in studies.items():
        for t in study.get_trials(deepcopy=False, states=(running,)):
            if not _abandoned(t, run):
                continue
            requeue(study, t, reason="its tune was killed")
            n += 1
            log(f"[{arch} #{t.number}] was left running by a killed tune: queued again")
    return n


def _abandoned(t: Any, run: TuneRun) -> bool:
    """A running trial of this folder and host, or one killed before it said whose it was
    (only in the folder's own SQLite file, which no other tune uses)."""
    if "tune_dir" not in t.user_attrs:
        return run.storage == default_storage(Path(run.out))
    return t.user_attrs["tune_dir"] == run.out and t.user_attrs.get("host") == run.host


def requeue(study: Any, trial: Any, reason: str) -> None:
    """Fail a running trial (``interrupted``, so it does not count) and enqueue its values,
    pointing the retry at the same run folder."""
    optuna = require_optuna()
    trial_id = trial._trial_id  # the storage's id: a FrozenTrial has no public one
    study._storage.set_trial_user_attr(trial_id, "interrupted", reason)
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    attrs = {"retry_of": trial.number}
    if trial.user_attrs.get("run_dir"):
        attrs["resume_dir"] = trial.user_attrs["run_dir"]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


def worker_env(jobs: int) -> Dict[str, str]:
    """The environment of a worker process: the node's cores split between ``jobs``."""
    from torchrec_ple.threads import NUM_THREADS, available_cores

    env = dict(os.environ)
    if NUM_THREADS not in os.environ:
        env[NUM_THREADS] = str(max(1, available_cores() // jobs))
    return env
