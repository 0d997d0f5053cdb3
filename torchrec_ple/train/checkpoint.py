"""Atomic ``torch.distributed.checkpoint`` save/load of the sharded model and optimizers.

A checkpoint is a directory holding DCP shards (``model`` and ``optim`` state) and a
``trainer.json`` with the loop position. It is written into ``<name>.tmp`` and renamed
only when every rank finished, so a crash mid-write never leaves a half checkpoint
under the final name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.optim import Optimizer

TRAINER_STATE = "trainer.json"


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: Optional[Optimizer], trainer_state: Dict[str, Any]
) -> None:
    """Save on every rank; the directory appears under ``path`` only when complete.

    Args:
        path (Path): final checkpoint directory (replaced if it exists).
        model (nn.Module): the (DMP-wrapped) model.
        optimizer (Optional[Optimizer]): the combined optimizer, or None.
        trainer_state (Dict[str, Any]): JSON-serializable loop position and settings.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.save(state, checkpoint_id=str(tmp))
    if rank == 0:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        old = path.with_name(path.name + ".old")
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


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints under ``root``, oldest first (half-written ``.tmp`` ones are skipped)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and (p / TRAINER_STATE).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0 only)."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
