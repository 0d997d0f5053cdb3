"""Atomic ``torch.distributed.checkpoint`` save/load of the sharded model and optimizers.

A checkpoint is a directory holding DCP shards (``model`` and ``optim`` state) and a
``trainer.json`` with the loop position. It is written into ``<name>.tmp`` and renamed
only when every rank finished, so a crash mid-write never leaves a half checkpoint
under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.optim import Optimizer

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.spec.errors import DataError

TRAINER_STATE = "trainer.json"
BEST_FILE = "best.json"  # in the checkpoints folder: which checkpoint train.select chose
# Keys of the train module's state that were renamed since checkpoints were first written
# (new name -> old name): a checkpoint holding only the old name loads under it. The
# uncertainty weighting's log-variances lived at the module's root before loss weightings
# became modules of their own.
RENAMED_KEYS: Dict[str, str] = {"loss_weighting.log_vars": "log_vars"}


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions); older ones are intact."""


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done.

    An interrupt in the middle of DCP's writes would leave a half-written checkpoint (and
    surface as a misleading write error); held until the save completes, Ctrl-C ends the
    run with this checkpoint as its newest. Only the main thread can hold signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: Optional[Optimizer], trainer_state: Dict[str, Any]
) -> None:
    """Save on every rank; the directory appears under ``path`` only when complete.

    Args:
        path (Path): final checkpoint directory (replaced if it exists).
        model (nn.Module): the (DMP-wrapped) model.
        optimizer (Optional[Optimizer]): the combined optimizer, or None.
        trainer_state (Dict[str, Any]): JSON-serializable loop position and settings.

    Raises:
        CheckpointWriteError: on every rank when any rank failed to write (e.g. a full
            disk); the half-written directory is removed and older checkpoints are intact.
        KeyboardInterrupt: a Ctrl-C received while writing, once the checkpoint is complete.
    """
    with _ctrl_c_after():
        _save_checkpoint(path, model, optimizer, trainer_state)


def _save_checkpoint(
    path: Path, model: nn.Module, optimizer: Optional[Optimizer], trainer_state: Dict[str, Any]
) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    try:
        # DCP gathers every rank's write result, so all ranks raise together.
        dcp.save(state, checkpoint_id=str(tmp))
        if rank == 0:
            write_text_atomic(tmp / TRAINER_STATE, json.dumps(trainer_state, indent=1))
    except (OSError, CheckpointException) as e:  # DCP's exception is a BaseException
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        free = shutil.disk_usage(path.parent).free / 2**20
        raise CheckpointWriteError(
            f"{tmp}: {_first_os_error(e)}; {free:.0f} MB free on that disk now"
        ) from None
    if rank == 0:
        old = path.with_name(path.name + ".old")
        if old.exists():  # left by a crash during an earlier save of this step
            shutil.rmtree(old)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        if old.exists():
            shutil.rmtree(old)
    _barrier()


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: Optional[Optimizer] = None
) -> Dict[str, Any]:
    """Load a checkpoint into an already built (and sharded) model and optimizer.

    The target may be sharded differently (another world size or sharding type): DCP
    reshards. The dense optimizer's state must exist before loading, so callers pass an
    optimizer whose ``init_state()`` has run (see :func:`torchrec_ple.train.trainer`).

    Args:
        path (Path): a checkpoint directory (``checkpoints/step_*``).
        model (nn.Module): the model built from the spec, to load into.
        optimizer (Optional[Optimizer]): its optimizer, or None (evaluation).

    Returns:
        Dict[str, Any]: the trainer state saved with it.

    Raises:
        DataError: one line naming the checkpoint and what is wrong: a missing, garbage
            or truncated file, or a parameter whose shape differs from the model the spec
            builds (``run has [22], spec has [38]``).
    """
    meta = path / TRAINER_STATE
    if not meta.is_file():
        raise DataError(
            file=str(path),
            expected=f"a torchrec-ple checkpoint (with {TRAINER_STATE})",
            found="a folder without it" if path.is_dir() else "nothing",
        )
    try:
        trainer_state = json.loads(meta.read_text())
    except (ValueError, OSError) as e:
        raise DataError(
            file=str(meta), expected="the JSON written by fit", found=_one_line(e)
        ) from None
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    # DCP logs each failed metadata read on the root logger with its traceback before
    # raising; the error below says the same in one line.
    quiet = _DropRecords("metadata is not found")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        read_state(path, state)
    except (Exception, CheckpointException) as e:  # DCP's exception is a BaseException
        raise _read_error(path, e) from None
    finally:
        root.removeFilter(quiet)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    return trainer_state


def read_state(path: Path, state: Dict[str, Any], no_dist: bool = False) -> None:
    """``dcp.load`` of ``state`` (``{"model": ..., "optim": ...}``) in place, with the keys
    of :data:`RENAMED_KEYS` read under their old names where the checkpoint has only those.

    Args:
        path (Path): the checkpoint directory.
        state (Dict[str, Any]): ``model`` (a state dict) and optionally ``optim``.
        no_dist (bool): read in one process, whatever wrote it. Default: False.
    """
    renames = _old_names(path, state.get("model", {}))
    if renames:
        _rename(state, renames)
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=no_dist)
    finally:
        if renames:
            _rename(state, {old: new for new, old in renames.items()})


def _old_names(path: Path, model_state: Dict[str, Any]) -> Dict[str, str]:
    """The renamed keys of ``model_state`` that the checkpoint holds under the old name."""
    wanted = {new: old for new, old in RENAMED_KEYS.items() if new in model_state}
    if not wanted:
        return {}
    try:
        saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception:  # unreadable: dcp.load reports it
        return {}
    return {
        new: old
        for new, old in wanted.items()
        if f"model.{new}" not in saved and f"model.{old}" in saved
    }


def _rename(state: Dict[str, Any], names: Dict[str, str]) -> None:
    """Rename parameter keys in a model state dict and in an optimizer's state, in place."""
    model = state.get("model", {})
    for key in [k for k in model if k in names]:
        model[names[key]] = model.pop(key)
    optim = state.get("optim")
    if isinstance(optim, dict) and isinstance(optim.get("state"), dict):
        per_param = optim["state"]
        for key in [k for k in per_param if k in names]:
            per_param[names[key]] = per_param.pop(key)
        for group in optim.get("param_groups") or []:
            if isinstance(group, dict) and isinstance(group.get("params"), list):
                group["params"] = [names.get(p, p) for p in group["params"]]


def load_newest(
    checkpoints: List[Path],
    root: Path,
    model: nn.Module,
    optimizer: Optional[Optimizer],
    log: Optional[Callable[[str], None]],
) -> Tuple[Dict[str, Any], Path]:
    """Load the newest of ``checkpoints`` that loads; a corrupt one is reported and skipped.

    Args:
        checkpoints (List[Path]): complete checkpoints, oldest first.
        root (Path): their folder (for the message).
        model (nn.Module): the sharded model.
        optimizer (Optional[Optimizer]): its optimizer (state initialized).
        log (Optional[Callable[[str], None]]): where the skips are said (rank 0).

    Returns:
        Tuple[Dict[str, Any], Path]: the trainer state and the checkpoint loaded.

    Raises:
        DataError: none loads (each one's error named).
    """
    errors = []
    for ckpt in reversed(checkpoints):
        try:
            return load_checkpoint(ckpt, model, optimizer), ckpt
        except (Exception, CheckpointException) as e:  # DCP's is a BaseException
            errors.append(
                f"{ckpt.name}: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
            )
            if log is not None:
                log(f"checkpoint {ckpt.name} is unreadable ({errors[-1]}); trying the previous one")
    raise DataError(
        file=str(root), expected="a readable checkpoint", found="; ".join(errors) or "none"
    )


def load_in_one_process(path: Path, module: nn.Module) -> None:
    """Load a checkpoint's model state into an unsharded module, without a process group
    (``no_dist``), whatever world size and sharding wrote it.

    Raises:
        DataError: the checkpoint does not hold ``module``'s state.
    """
    state = {"model": module.state_dict()}
    try:
        with warnings.catch_warnings():
            # no_dist=True is the intent: DCP still warns that it loads in one process.
            warnings.filterwarnings(
                "ignore", message=r"torch.distributed is disabled", category=UserWarning
            )
            read_state(path, state, no_dist=True)
    except Exception as e:  # DCP raises CheckpointException / RuntimeError with long texts
        lines = str(e).strip().splitlines()
        raise DataError(
            file=str(path),
            expected="a checkpoint of a model built from this spec and transforms",
            found=lines[0][:300] if lines else type(e).__name__,
        ) from e
    module.load_state_dict(state["model"])


class _DropRecords(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self._fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self._fragment not in record.getMessage()


# DCP's text for a parameter whose saved shape is not the model's
_SIZE_MISMATCH = re.compile(
    r"Size mismatch between saved torch\.Size\(\[([^\]]*)\]\) and current: "
    r"torch\.Size\(\[([^\]]*)\]\) for (\S+)"
)


def _read_error(path: Path, e: BaseException) -> DataError:
    """A failed DCP load as one line: a shape mismatch names the parameter and both
    shapes; anything else (garbage, truncation) gives the underlying error's first line."""
    cause = _root_error(e)
    text = _one_line(cause)
    hint = "compare the spec with the run's spec.yaml"
    m = _SIZE_MISMATCH.search(str(cause))
    if m is not None:
        saved, current, name = m.groups()
        # DCP's key is "model." + the DMP key ("model." + the module's own name)
        while name.startswith("model."):
            name = name[len("model.") :]
        return DataError(
            file=str(path),
            expected="a checkpoint of the model this spec builds",
            found=f"parameter '{name}' of another shape: run has [{saved}], spec has [{current}]",
            hint=f"the spec's model or feature dims differ from the run's; {hint}",
        )
    meta = re.search(r"global metadata read failed: ([^;]*)", text)
    if meta is not None:
        text = f"an unreadable .metadata file ({meta.group(1)})"
    if "Missing key" in text or "unexpected key" in text.lower():
        return DataError(
            file=str(path),
            expected="a checkpoint of the model this spec builds",
            found=text,
            hint=f"the spec's model or features differ from the run's; {hint}",
        )
    return DataError(
        file=str(path),
        expected="a readable checkpoint written by fit",
        found=text,
        hint="the checkpoint is damaged or truncated; use an earlier checkpoints/step_* folder",
    )


def _root_error(e: BaseException) -> BaseException:
    """The first rank's original exception inside a DCP ``CheckpointException``."""
    for failure in getattr(e, "failures", {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exc, BaseException):
            return exc
    return e


def _one_line(e: BaseException) -> str:
    """The first sentence of an error's text, after its type."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text.split(". ")[0].rstrip(".")  # torch's texts go on with advice for its own users
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _first_os_error(e: BaseException) -> str:
    """The underlying error of a (possibly DCP-wrapped) write failure, in one line: the
    first ``OSError`` in the exception chains if any (torch.save reports a failed write as
    a ``RuntimeError`` from its zip writer, with the ``OSError`` as context)."""
    errors: List[BaseException] = [e]
    for failure in getattr(e, "failures", {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exc, BaseException):
            errors.append(exc)
    for exc in errors:
        cur: Optional[BaseException] = exc
        while cur is not None:
            if isinstance(cur, OSError):
                return f"OSError: {cur}"
            cur = cur.__cause__ or cur.__context__
    last = errors[-1]
    text = str(last).splitlines()[0] if str(last) else ""
    return f"{type(last).__name__}: {text}"


_NAME = re.compile(r"step_\d+")


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints under ``root``, oldest first (half-written ``.tmp`` ones are skipped)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and _NAME.fullmatch(p.name) and (p / TRAINER_STATE).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0 only), and what
    crashed saves left behind (``step_*.tmp``, ``step_*.old``).

    The best checkpoint (the one ``best.json`` names, see :func:`write_best`) is never
    deleted: it is kept beside the newest ones.
    """
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    best = read_best(root)
    protected = best.get("checkpoint") if best else None
    for old in list_checkpoints(root)[:-keep]:
        if old.name != protected:
            # renamed first (atomic): a kill during the delete leaves ``step_N.old``, which
            # the next prune removes, never a half-deleted ``step_N`` that looks like a run's
            gone = old.with_name(old.name + ".old")
            try:
                old.rename(gone)
            except OSError:
                continue
            shutil.rmtree(gone, ignore_errors=True)
    for left in root.glob("step_*"):
        if left.is_dir() and left.suffix in (".tmp", ".old"):
            shutil.rmtree(left, ignore_errors=True)


def write_best(root: Path, record: Dict[str, Any]) -> None:
    """Record the best checkpoint of a run (rank 0 only): ``<root>/best.json``.

    Args:
        root (Path): the run's ``checkpoints`` folder.
        record (Dict[str, Any]): ``{"checkpoint": "step_...", "epoch", "step", "score",
            "tasks", ...}``; ``checkpoint`` names a complete checkpoint under ``root``.
    """
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    write_text_atomic(root / BEST_FILE, json.dumps(record, indent=1))


def read_best(root: Path) -> Optional[Dict[str, Any]]:
    """The record of :func:`write_best`, or None (no ``train.select``, or unreadable)."""
    try:
        record = json.loads((root / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "checkpoint" in record else None


def best_checkpoint(root: Path) -> Optional[Path]:
    """The complete checkpoint ``best.json`` names, or None."""
    record = read_best(root)
    if record is None:
        return None
    path = root / str(record["checkpoint"])
    return path if _NAME.fullmatch(path.name) and (path / TRAINER_STATE).is_file() else None


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
