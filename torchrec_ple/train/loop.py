"""Pieces of the training loop: TensorBoard scalars, the progress bar, the learning-rate
schedule, every rank's RNG and running loss in a checkpoint, and the non-finite-loss error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import DistContext
from torchrec_ple.train.lr_schedule import LrSchedule
from torchrec_ple.train.state import TrainState

__all__ = [
    "Scalars",
    "TrainingError",
    "gather_rank_states",
    "lr_schedule",
    "non_finite",
    "progress_bar",
    "progress_enabled",
    "restore_rank_state",
]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what."""


def progress_enabled(setting: Any) -> bool:
    """``train.progress``: ``auto`` shows bars only when stderr (tqdm's) is a terminal."""
    if setting == "auto":
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(setting)


def progress_bar(total: int, epoch: int, enabled: bool) -> Any:
    """An epoch's tqdm bar (disabled: a no-op one)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", disable=not enabled, leave=False)


class Scalars:
    """TensorBoard scalars on rank 0 (a no-op elsewhere or when disabled).

    Args:
        log_dir (Optional[Path]): the event folder; None writes nothing.
        purge_step (Optional[int]): a resumed run's first new step: events an earlier
            invocation wrote at this step or later (after the checkpoint it resumes from)
            are hidden, so TensorBoard shows no step twice. Default: None.
    """

    def __init__(self, log_dir: Optional[Path], purge_step: Optional[int] = None) -> None:
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def add(self, values: Dict[str, float], step: int) -> None:
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def lr_schedule(
    spec: Spec, state: TrainState, batches_per_epoch: int, log: Optional[Callable[[str], None]]
) -> Optional[LrSchedule]:
    """``train.lr_schedule`` over the dense optimizer's param groups and (with ``tables``)
    the fused embedding optimizers' (TorchRec passes their ``lr`` to fbgemm's
    ``set_learning_rate`` in ``zero_grad``, before each step's backward)."""
    s = spec.train.lr_schedule
    if s is None:
        return None
    fused = list(state.model.fused_optimizer.param_groups)
    fused_ids = {id(g) for g in fused}
    dense = [g for g in state.optimizer.param_groups if id(g) not in fused_ids]
    groups = dense + (fused if s.tables else [])
    total = batches_per_epoch * spec.train.epochs
    if spec.train.max_steps is not None:
        total = min(total, spec.train.max_steps)
    if log is not None:
        what = "the dense optimizer" + (" and the fused embedding tables" if s.tables else "")
        decay = {"none": "constant", "cosine": f"cosine to x{s.min_lr_ratio:g} at step {total}"}
        shape = decay.get(s.decay, f"x{s.gamma:g} every {s.step_size} steps")
        log(f"lr_schedule: warmup {s.warmup_steps} steps, then {shape}; applied to {what}")
    return LrSchedule(s, total, groups)  # type: ignore[arg-type]


def gather_rank_states(
    ctx: DistContext, epoch_loss_sum: List[float], epoch_steps: int
) -> List[Dict[str, Any]]:
    """Every rank's RNG states and running epoch loss, for the checkpoint (all ranks call)."""
    own: Dict[str, Any] = {
        "torch_rng": torch.get_rng_state().tolist(),
        "epoch_loss_sum": epoch_loss_sum,
        "epoch_steps": epoch_steps,
    }
    if ctx.device.type == "cuda":
        own["cuda_rng"] = torch.cuda.get_rng_state(ctx.device).tolist()
    if ctx.world_size == 1:
        return [own]
    states: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, own)
    return states


def restore_rank_state(saved: Dict[str, Any], ctx: DistContext) -> Optional[Dict[str, Any]]:
    """Restore this rank's RNG from a checkpoint; returns its saved state, if any.

    With the same world size every rank gets its own state back, so dropout draws the
    masks an uninterrupted run would. Resharded to another world size, every rank takes
    rank 0's (an exact continuation is not defined then).
    """
    ranks = saved.get("ranks") or []
    mine = ranks[ctx.rank] if len(ranks) == ctx.world_size else None
    rng = mine["torch_rng"] if mine is not None else saved["torch_rng"]
    torch.set_rng_state(torch.tensor(rng, dtype=torch.uint8))
    if mine is not None and "cuda_rng" in mine and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(torch.tensor(mine["cuda_rng"], dtype=torch.uint8), ctx.device)
    return mine


def non_finite(
    spec: Spec, losses: torch.Tensor, step: int, epoch: int, batch: int, rows: str, newest: Any
) -> TrainingError:
    """The error of a step whose loss is NaN or inf.

    Args:
        spec (Spec): the spec (task names).
        losses (torch.Tensor): (K,) the step's losses, on CPU.
        step (int): the step; ``epoch`` and ``batch`` its position.
        rows (str): ``; its training rows ...`` when the loader names them, else empty.
        newest (Optional[Path]): the newest checkpoint, or None.
    """
    bad = [f"{t.name}={v}" for t, v in zip(spec.tasks, losses.tolist()) if not np.isfinite(v)]
    where = f"the newest checkpoint is {newest}" if newest else "no checkpoint was written yet"
    return TrainingError(
        f"non-finite loss at step {step} (epoch {epoch}, batch {batch}): {', '.join(bad)}{rows}; "
        f"the step was not applied and training stopped, {where}. Lower the learning rates or "
        f"check the data (metrics.json 'data' counts), then fit --resume; or set "
        f"train.on_nonfinite_loss: skip to skip such steps (counted in metrics.json)."
    )
