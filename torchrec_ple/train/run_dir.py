"""The run folder of ``fit`` (``--out``): its paths, its checkpoints, and how it is opened.

:class:`RunDir` owns the layout (``spec.yaml``, ``transforms.json``, ``metrics.json``,
``tensorboard/``, ``checkpoints/step_*`` and ``checkpoints/best.json``), picks a checkpoint
(``--checkpoint-step best|last|STEP``) and loads it: sharded into the trainer's model (fit,
evaluate) or unsharded into a plain model (export, predict). :func:`open_run` checks and
locks a folder for ``fit``: an earlier run there is refused unless ``--resume`` continues it
or ``--overwrite`` replaces it (removed only once the new run's data was read and its
transforms fitted); ``--resume`` needs a checkpoint and the spec the run was trained with
(:mod:`~torchrec_ple.train.run_spec`). Every refusal is one ``DataError``/``SpecError`` line.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from torchrec_ple.spec.errors import DataError, SpecError
from torchrec_ple.train.out_paths import (
    _check_not_user_spec,
    check_out_arg,
    check_out_file,
    check_out_folder,
)
from torchrec_ple.train.run_lock import LOCK_FILE, RunLock, holder_text, release_all
from torchrec_ple.train.run_spec import (
    _MAX_NAMED_CHANGES,
    RESUMABLE_KEYS,
    RESUMABLE_SECTIONS,
    _diff,  # noqa: F401 (the resume check of fit, also tune's)
    _resolved,  # noqa: F401
    load_saved_spec,
    saved_spec_mapping,
    spec_changes,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchrec_ple.data.transforms import FeatureTransforms
    from torchrec_ple.models.multitask import MultiTaskModel

__all__ = [
    "CHECKPOINT_CHOICES",
    "LOCK_FILE",
    "RESUMABLE_KEYS",
    "RESUMABLE_SECTIONS",
    "RunDir",
    "RunFolder",
    "RunLock",
    "check_out_arg",
    "check_out_file",
    "check_out_folder",
    "describe_checkpoint",
    "earlier_run",
    "interrupted_message",
    "load_saved_spec",
    "open_run",
    "release_all",
    "saved_spec_mapping",
    "spec_changes",
]

SPEC_FILE, TRANSFORMS_FILE, METRICS_FILE = "spec.yaml", "transforms.json", "metrics.json"
CHECKPOINT_DIR, TENSORBOARD_DIR = "checkpoints", "tensorboard"
TRAINER_STATE = "trainer.json"  # a complete checkpoint has it (checkpoint.TRAINER_STATE)
CHECKPOINT_CHOICES = ("best", "last")


class RunDir:
    """A run folder of ``fit``: the paths in it, its checkpoints, and loading one.

    Args:
        path (Union[str, Path]): the folder (``fit --out``).

    Example::

        run, ckpt = RunDir.locate(Path("runs/first"), "best")
        print(run.describe(ckpt))  # step_000000024 (best: epoch 1, cvr auc 0.7214)
        model, transforms = run.load_unsharded(run.load_spec(), ckpt)
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self._path = Path(path)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def spec_file(self) -> Path:
        return self._path / SPEC_FILE

    @property
    def transforms_file(self) -> Path:
        return self._path / TRANSFORMS_FILE

    @property
    def metrics_file(self) -> Path:
        return self._path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        """The ``checkpoints`` folder (``step_*`` and ``best.json``)."""
        return self._path / CHECKPOINT_DIR

    @property
    def tensorboard(self) -> Path:
        return self._path / TENSORBOARD_DIR

    # ------------------------------------------------------------------ checkpoints

    def list_checkpoints(self) -> List[Path]:
        """Complete checkpoints, oldest first."""
        from torchrec_ple.train.checkpoint import list_checkpoints

        return list_checkpoints(self.checkpoints)

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint, or None."""
        found = self.list_checkpoints()
        return found[-1] if found else None

    def best_checkpoint(self) -> Optional[Path]:
        """The checkpoint ``train.select`` chose (``best.json``), or None."""
        from torchrec_ple.train.checkpoint import best_checkpoint

        return best_checkpoint(self.checkpoints)

    def checkpoint(self, which: Optional[str] = None) -> Optional[Path]:
        """The checkpoint ``--checkpoint-step`` names: ``best`` (refused when the run has
        none), ``last``, a step, or None (the best when the run has one, else the newest).

        Raises:
            DataError: no best checkpoint was recorded, or no checkpoint has that step.
        """
        root = self.checkpoints
        if which in (None, "best"):
            best = self.best_checkpoint()
            if best is not None or which is None:
                return best or self.latest_checkpoint()
            raise DataError(
                file=str(root),
                expected="a best checkpoint (a run fitted with train.select)",
                found="none recorded",
                hint="--checkpoint-step last uses the newest checkpoint",
            )
        if which == "last":
            return self.latest_checkpoint()
        from torchrec_ple.train.checkpoint import checkpoint_name

        names = [p.name for p in self.list_checkpoints()]
        text = str(which).strip()
        wanted = checkpoint_name(int(text)) if text.isdigit() else text
        if wanted not in names:
            steps = ", ".join(str(int(n.removeprefix("step_"))) for n in names) or "none"
            raise DataError(
                file=str(root),
                expected="--checkpoint-step best, last or the step of a checkpoint there",
                found=f"{which!r} (steps: {steps})",
            )
        return root / wanted

    @classmethod
    def locate(
        cls, path: Union[str, Path], which: Optional[str] = None, fresh: bool = False
    ) -> Tuple[RunDir, Path]:
        """The run folder and checkpoint a path names: a run folder (then ``which`` picks,
        see :meth:`checkpoint`) or one of its ``checkpoints/step_*``.

        Args:
            path (Union[str, Path]): ``fit``'s run folder, or one of its checkpoints.
            which (Optional[str]): ``best``, ``last``, a step or None. Default: None.
            fresh (bool): refuse a checkpoint older than the run's ``transforms.json``
                (left by an earlier fit into the folder). Default: False.

        Raises:
            DataError: no complete checkpoint there, no ``transforms.json``, or (``fresh``)
                a stale checkpoint.
        """
        path = Path(path)
        if (path / CHECKPOINT_DIR).is_dir():
            run, ckpt = cls(path), cls(path).checkpoint(which)
        else:
            run = cls(path.parent.parent)
            ckpt = path if (path / TRAINER_STATE).is_file() else None
        if ckpt is None:
            raise DataError(
                file=str(path),
                expected="a run directory of fit, or one of its checkpoints/step_* folders",
                found="no complete checkpoint",
            )
        if not run.transforms_file.is_file():
            raise DataError(
                file=str(run.transforms_file),
                expected="the transforms.json written by fit",
                found="nothing",
            )
        if fresh:
            run._check_fresh(ckpt)
        return run, ckpt

    def _check_fresh(self, ckpt: Path) -> None:
        """A fresh ``fit`` writes its transforms before any checkpoint: an older checkpoint
        was left in the folder by an earlier fit (whose model need not match them)."""
        meta = ckpt / TRAINER_STATE
        if meta.is_file() and meta.stat().st_mtime < self.transforms_file.stat().st_mtime:
            raise DataError(
                file=str(ckpt),
                expected=f"a checkpoint written after {TRANSFORMS_FILE} (by the same fit)",
                found="an older one, left by an earlier fit into this directory",
                hint="remove the stale checkpoints/step_* folders or fit into a new directory",
            )

    def describe(self, ckpt: Path) -> str:
        """What a checkpoint of the run is, for a line of output: ``step_... (best: epoch 1,
        cvr auc 0.7214)``, ``step_... (last, after epoch 2)`` or ``step_...``."""
        from torchrec_ple.train.checkpoint import read_best
        from torchrec_ple.train.history import score_text

        best = read_best(ckpt.parent)
        last = RunDir(ckpt.parent.parent).latest_checkpoint()
        is_last = last is not None and last.name == ckpt.name
        if best is not None and best.get("checkpoint") == ckpt.name:
            return (
                f"{ckpt.name} ({'best and last' if is_last else 'best'}: epoch "
                f"{best.get('epoch')}, {score_text(best)})"
            )
        if is_last:
            meta = self.trainer_state(ckpt) or {}
            done = meta.get("epoch"), meta.get("batch_in_epoch")
            where = f", after epoch {done[0] - 1}" if done[1] == 0 and done[0] else ""
            return f"{ckpt.name} (last{where})"
        return ckpt.name

    @staticmethod
    def trainer_state(ckpt: Path) -> Optional[Dict[str, Any]]:
        """A checkpoint's ``trainer.json`` (its loop position), or None if unreadable."""
        try:
            return json.loads((ckpt / TRAINER_STATE).read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ files and loading

    def load_spec(self, overrides: Any = ()) -> Any:
        """The run's saved ``spec.yaml`` (see :func:`load_saved_spec`)."""
        return load_saved_spec(self._path, overrides)

    def read_metrics(self) -> Optional[Dict[str, Any]]:
        """The run's ``metrics.json``, or None."""
        try:
            metrics = json.loads(self.metrics_file.read_text())
        except (OSError, ValueError):
            return None
        return metrics if isinstance(metrics, dict) else None

    def load_sharded(
        self, ckpt: Path, model: nn.Module, optimizer: Optional[Any] = None
    ) -> Dict[str, Any]:
        """Load a checkpoint into the trainer's (sharded) model and optimizer; returns its
        trainer state (see :func:`~torchrec_ple.train.checkpoint.load_checkpoint`)."""
        from torchrec_ple.train.checkpoint import load_checkpoint

        return load_checkpoint(ckpt, model, optimizer)

    def load_newest(
        self, model: nn.Module, optimizer: Any, log: Optional[Callable[[str], None]]
    ) -> Tuple[Dict[str, Any], Path]:
        """Load the newest checkpoint that loads; a corrupt one is reported and skipped.

        Raises:
            DataError: no checkpoint loads (each one's error named).
        """
        from torchrec_ple.train.checkpoint import load_newest

        return load_newest(self.list_checkpoints(), self.checkpoints, model, optimizer, log)

    def load_unsharded(
        self, spec: Any, ckpt: Path, device: Union[str, torch.device] = "cpu"
    ) -> Tuple[MultiTaskModel, FeatureTransforms]:
        """Build the model unsharded, as the trainer wraps it, and load a checkpoint into it
        (in one process, whatever world size and sharding wrote it; on CPU, then moved).

        Args:
            spec (Spec): the run's spec.
            ckpt (Path): one of the run's checkpoints.
            device (Union[str, torch.device]): where the model computes. Default: ``cpu``.

        Returns:
            Tuple[MultiTaskModel, FeatureTransforms]: the model in eval mode, and the run's
            transforms.

        Raises:
            DataError: the checkpoint is not one of a model this spec and transforms build.
        """
        from torchrec_ple.data.transforms import FeatureTransforms
        from torchrec_ple.models.builder import build_model
        from torchrec_ple.train.checkpoint import load_in_one_process
        from torchrec_ple.train.state import train_module

        transforms = FeatureTransforms.load(spec, self.transforms_file)
        model = build_model(spec, transforms, device="cpu")
        load_in_one_process(ckpt, train_module(spec, model))  # the trainer's module
        model.eval()
        return model.to(device), transforms


def describe_checkpoint(ckpt: Path) -> str:
    """:meth:`RunDir.describe` of a checkpoint of a run (``<run>/checkpoints/step_*``)."""
    return RunDir(ckpt.parent.parent).describe(ckpt)


# ----------------------------------------------------------------------- opening a run


def earlier_run(folder: Path) -> List[str]:
    """What an earlier fit left in ``folder`` that a new run would replace (for messages).

    Returns:
        List[str]: e.g. ``["checkpoints step_000000012, step_000000024", "metrics.json"]``;
        empty when the folder holds no run.
    """
    found = []
    ckpts = [p.name for p in RunDir(folder).list_checkpoints()]
    if ckpts:
        found.append("checkpoints " + ", ".join(ckpts))
    if (Path(folder) / METRICS_FILE).is_file():
        found.append(METRICS_FILE)
    return found


@dataclass
class RunFolder:
    """What ``fit`` does with its folder, decided on rank 0 before any data is read.

    Args:
        path (Path): the folder.
        resume_from (Optional[Path]): the newest complete checkpoint to continue from.
        replace (List[str]): an earlier run that ``--overwrite`` replaces (see
            :func:`earlier_run`); empty when there is none.
        write_spec (bool): write ``spec.yaml`` (a new run, or a run that lacks it).
        lock (Optional[RunLock]): held on rank 0 while the run lives.
    """

    path: Path
    resume_from: Optional[Path] = None
    replace: List[str] = field(default_factory=list)
    write_spec: bool = True
    lock: Optional[RunLock] = None

    def replace_earlier(self, log: Callable[[str], None]) -> None:
        """Remove the earlier run's checkpoints, metrics and TensorBoard events (rank 0).

        Called once the new run's data is read and its transforms fitted: a failure before
        leaves the earlier run whole. Also clears what crashed saves of a run without a
        complete checkpoint left, so a new run is never paired with them.
        """
        if self.resume_from is not None:
            return
        gone = [self.path / CHECKPOINT_DIR, self.path / METRICS_FILE]
        if self.replace:
            gone.append(self.path / TENSORBOARD_DIR)
        for p in gone:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if self.replace:
            log(f"--overwrite: replaced the earlier run in {self.path}: {'; '.join(self.replace)}")


def open_run(
    spec: Any,
    folder: Path,
    *,
    resume: bool,
    overwrite: bool,
    restarted: bool,
    log: Callable[[str], None],
) -> RunFolder:
    """Check, create and lock a run folder, and decide how ``fit`` uses it (rank 0 only).

    Nothing is written but the folder and its lock: a refused ``--resume`` leaves the run
    as it was.

    Args:
        spec (Spec): the spec to train.
        folder (Path): ``--out``.
        resume (bool): continue the run from its newest checkpoint.
        overwrite (bool): replace an earlier run (once the new run's data is read).
        restarted (bool): a ``torchrun`` restart, which may find no checkpoint yet.
        log (Callable[[str], None]): where notices go.

    Raises:
        DataError: the folder cannot be used, is locked, holds an earlier run without
            ``resume``/``overwrite``, or has no checkpoint to resume.
        SpecError: ``resume`` with a spec that differs from the run's in a key that may
            not change.
    """
    folder = Path(folder)
    _check_not_user_spec(folder, getattr(spec, "path", None))
    check_out_folder(folder)
    if resume and not restarted and not folder.is_dir():
        raise DataError(
            file=str(folder), expected="the run folder of a fit to --resume", found="nothing"
        )
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    try:
        run = _decide(spec, RunFolder(folder, lock=lock), resume, overwrite, restarted, log)
    except BaseException:
        lock.release()  # a refused run leaves the folder free at once
        raise
    if lock.took_over:
        log(f"took over {lock.path}: its {holder_text(lock.took_over)} is no longer running")
    return run


def _decide(
    spec: Any,
    run: RunFolder,
    resume: bool,
    overwrite: bool,
    restarted: bool,
    log: Callable[[str], None],
) -> RunFolder:
    """Fill in ``run`` for a new, replacing or resumed run, or refuse (see :func:`open_run`)."""
    folder = run.path
    earlier = earlier_run(folder)
    if not resume:
        if earlier and not overwrite:
            raise DataError(
                file=str(folder),
                expected="a new or empty run folder",
                found=f"an earlier run ({'; '.join(earlier)})",
                hint="pass --resume to continue it, --overwrite to replace it, or pick a new --out",
            )
        run.replace = earlier
        return run
    run.resume_from = RunDir(folder).latest_checkpoint()
    saved = folder / SPEC_FILE
    if run.resume_from is None:
        if not restarted:
            raise DataError(
                file=str(folder / CHECKPOINT_DIR),
                expected="a complete checkpoint to --resume from",
                found="none",
                hint="fit without --resume starts the run",
            )
        log(f"resume: no complete checkpoint under {folder / CHECKPOINT_DIR} yet; starting over")
        return run
    if saved.is_file():
        changed = spec_changes(spec, saved)
        if changed:
            more = len(changed) - _MAX_NAMED_CHANGES
            found = "; ".join(changed[:_MAX_NAMED_CHANGES]) + (f"; {more} more" if more > 0 else "")
            raise SpecError(
                file=str(saved),
                expected="--resume with the spec the run was trained with",
                found=found,
                hint="only train.epochs, train.max_steps, logging and checkpoint settings, "
                "data paths and table sharding may change; fit into a new --out to train "
                "another spec",
            )
        run.write_spec = False
    else:
        log(f"resume: {saved} is missing; writing the current spec there")
    return run


def interrupted_message(folder: Optional[Path], tb: Optional[TracebackType]) -> str:
    """The one line of a ``fit`` ended by Ctrl-C: the step reached and what to resume from.

    Args:
        folder (Optional[Path]): the run folder (``--out``).
        tb (Optional[TracebackType]): the ``KeyboardInterrupt``'s traceback; the step is
            read from the frame of ``trainer.fit`` in it (its :class:`Trainer`'s step).
    """
    step: Optional[int] = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "fit" and frame.f_globals.get("__name__", "").endswith(
            "train.trainer"
        ):
            value = getattr(frame.f_locals.get("trainer"), "step", None)
            step = value if isinstance(value, int) else step
        tb = tb.tb_next
    where = f"interrupted at step {step}" if step is not None else "interrupted before training"
    newest = None
    if folder is not None:
        newest = RunDir(folder).latest_checkpoint()
    if newest is None:
        return f"{where}; no checkpoint was written; fit starts the run again"
    return f"{where}; the newest checkpoint is {newest}; fit --resume continues"
