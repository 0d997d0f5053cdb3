"""Atomic ``torch.distributed.checkpoint`` save/load of the sharded model and optimizers.

A checkpoint is a directory holding DCP shards (``model`` and ``optim`` state) and a
``trainer.json`` with the loop position. It is written into ``<name>.tmp`` and renamed
only when every rank finished, so a crash mid-write never leaves a half checkpoint
under the final name.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.optim import Optimizer

from torchrec_ple.atomic import write_text_atomic

TRAINER_STATE = "trainer.json"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions); older ones are intact."""


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
    """
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

    Returns:
        Dict[str, Any]: the trainer state saved with it.
    """
    meta = path / TRAINER_STATE
    if not meta.is_file():
        raise FileNotFoundError(f"{path}: not a torchrec-ple checkpoint (no {TRAINER_STATE})")
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    return json.loads(meta.read_text())


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
    crashed saves left behind (``step_*.tmp``, ``step_*.old``)."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for left in root.glob("step_*"):
        if left.is_dir() and left.suffix in (".tmp", ".old"):
            shutil.rmtree(left, ignore_errors=True)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
