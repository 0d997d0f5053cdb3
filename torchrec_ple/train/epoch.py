"""The steps of one epoch: the pipeline, the loss weighting's schedule, the learning-rate
schedule, the running train loss, skipped steps and the per-step TensorBoard scalars."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import torch

from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import DistContext
from torchrec_ple.train.fit_data import training_rows
from torchrec_ple.train.loop import (
    Scalars,
    TrainingError,
    lr_schedule,
    non_finite,
    progress_bar,
    progress_enabled,
)
from torchrec_ple.train.loss import MultiTaskTrainModule
from torchrec_ple.train.pipeline import batch_iterator, training_pipeline
from torchrec_ple.train.state import TrainState, dense_params
from torchrec_ple.train.weightings import LossWeighting

__all__ = ["EpochSteps"]


class EpochSteps:
    """Runs the training steps of each epoch and keeps the loop's counts.

    Args:
        spec (Spec): the validated spec.
        ctx (DistContext): this rank.
        state (TrainState): the sharded model and its optimizers.
        loader (Any): this rank's training batches (``len``, ``set_epoch``).
        scalars (Scalars): TensorBoard scalars.
        step (int): the step reached (a resumed run's).
        skipped (List[Dict[str, Any]]): steps skipped so far for a non-finite loss.
        log (Optional[Callable[[str], None]]): rank 0's log, else None.
        newest (Callable[[], Any]): the newest checkpoint (for the non-finite message).
    """

    def __init__(
        self,
        spec: Spec,
        ctx: DistContext,
        state: TrainState,
        loader: Any,
        scalars: Scalars,
        step: int,
        skipped: List[Dict[str, Any]],
        log: Optional[Callable[[str], None]],
        newest: Callable[[], Any],
    ) -> None:
        self._spec, self._ctx, self._state, self.loader = spec, ctx, state, loader
        self._scalars, self._log, self._newest = scalars, log, newest
        self.step, self.skipped = step, skipped
        clip = spec.train.clip_grad_norm
        self.pipeline = training_pipeline(
            state.model,
            state.optimizer,
            ctx.device,
            ctx.world_size,
            clip_params=dense_params(state),
            clip_grad_norm=clip,
            check_finite=spec.train.on_nonfinite_loss != "off",
        )
        if clip is not None and log is not None:
            log(
                f"clip_grad_norm {clip:g}: the dense parameters' gradients (global L2 norm); "
                "the sharded embedding tables are not clipped (their fused optimizer updates "
                "them inside the backward)"
            )
        module: MultiTaskTrainModule = state.model.module  # type: ignore[assignment]
        self.weighting: LossWeighting = module.loss_weighting
        self.samples, self.train_seconds, self.stopped = 0, 0.0, False
        # the epoch's loss sums stay on the compute device: read at log_every and epoch end
        self.loss_sum, self.n_applied = torch.zeros(len(spec.tasks), device=ctx.device), 0
        self.batch_in_epoch = 0
        self.lr_schedule = lr_schedule(spec, state, len(loader), log)
        self._show_progress = progress_enabled(spec.train.progress) and ctx.is_main

    def position(self, epoch: int) -> int:
        """The loss-weight schedule's ``t``: the step, or the epoch."""
        return self.step if self._spec.train.weight_schedule_unit == "step" else epoch

    def task_weights(self, epoch: int) -> List[float]:
        """The loss weighting's weights at the end of ``epoch`` (for the history)."""
        self.weighting.set_position(self.position(epoch))
        return self.weighting.logged_weights()

    def mean_loss(self) -> List[float]:
        """The epoch's mean train loss per task, over the applied steps."""
        return (self.loss_sum / max(self.n_applied, 1)).tolist()

    def run(
        self,
        epoch: int,
        start: int,
        saved: Optional[Dict[str, Any]],
        checkpoint: Callable[[int, int], None],
    ) -> None:
        """Train ``epoch`` from batch ``start`` until its batches (or ``max_steps``) end.

        Args:
            epoch (int): the epoch.
            start (int): the first batch (a resumed run's position).
            saved (Optional[Dict[str, Any]]): this rank's saved running loss when resumed
                mid-epoch (``epoch_loss_sum``, ``epoch_steps``), else None.
            checkpoint (Callable[[int, int], None]): saves at (epoch, batch in epoch), for
                ``train.checkpoint_every``.
        """
        ctx, k = self._ctx, len(self._spec.tasks)
        self.loader.set_epoch(epoch, start_batch=start)
        batches = batch_iterator(self.loader, ctx.device)
        self._state.model.train()
        self.loss_sum, self.n_applied = torch.zeros(k, device=ctx.device), 0
        if start > 0 and saved is not None:
            # resumed mid-epoch: the epoch's mean train loss covers the steps before too
            saved_sum = saved.get("epoch_loss_sum", [0.0] * k)
            self.loss_sum = torch.tensor(saved_sum, dtype=torch.float32, device=ctx.device)
            self.n_applied = int(saved.get("epoch_steps", 0))
        bar = progress_bar(len(self.loader), epoch, self._show_progress)
        bar.update(start)
        t_epoch = time.perf_counter()
        self.batch_in_epoch, n_steps = start, 0
        while self._train_step(epoch, batches, t_epoch, checkpoint):
            n_steps += 1
            self._show(bar, n_steps)
        bar.close()
        self.train_seconds += time.perf_counter() - t_epoch
        if hasattr(batches, "close"):
            batches.close()  # the prefetching thread, when it stopped early (max_steps)
        self.pipeline.end_epoch()

    def _train_step(
        self, epoch: int, batches: Any, t_epoch: float, checkpoint: Callable[[int, int], None]
    ) -> bool:
        """One step; False when the epoch's batches (or ``max_steps``) are used up."""
        spec = self._spec
        if spec.train.max_steps is not None and self.step >= spec.train.max_steps:
            self.stopped = True
            return False
        if self.lr_schedule is not None:
            self.lr_schedule.apply(self.step)
        self.weighting.set_position(self.position(epoch))
        try:
            losses, outputs, _, _ = self.pipeline.progress(batches)
        except StopIteration:
            return False
        self.step += 1
        self.batch_in_epoch += 1
        self.samples += outputs.shape[0]
        if not self.pipeline.last_step_applied:
            self._skip(losses, epoch)
        else:
            self.n_applied += 1
            self.loss_sum += losses.detach().float()
        if self.step % spec.train.log_every == 0:
            self._log_step(losses, t_epoch)
        if spec.train.checkpoint_every and self.step % spec.train.checkpoint_every == 0:
            checkpoint(epoch, self.batch_in_epoch)
        return True

    def _skip(self, losses: torch.Tensor, epoch: int) -> None:
        """A step the pipeline did not apply (non-finite loss): stop, or count it."""
        spec, batch = self._spec, self.batch_in_epoch - 1
        rows = training_rows(self.loader, epoch, batch)
        err = non_finite(spec, losses.float().cpu(), self.step, epoch, batch, rows, self._newest())
        if spec.train.on_nonfinite_loss == "stop":
            raise err
        self.skipped.append({"step": self.step, "epoch": epoch, "batch": batch})
        if self._log is not None:
            self._log(f"skipped step {self.step}: {str(err).split(';')[0]}")
        if len(self.skipped) > spec.train.max_skipped_steps:
            raise TrainingError(
                f"{len(self.skipped)} steps skipped for a non-finite loss, more than "
                f"train.max_skipped_steps={spec.train.max_skipped_steps}; the last: {err}"
            )

    def _show(self, bar: Any, n_steps: int) -> None:
        if self._show_progress and (n_steps % 10 == 0 or self.batch_in_epoch == len(self.loader)):
            names = [t.name for t in self._spec.tasks]
            bar.set_postfix({n: f"{v:.4f}" for n, v in zip(names, self.mean_loss())})
        bar.update(1)

    def _log_step(self, losses: torch.Tensor, t_epoch: float) -> None:
        """TensorBoard scalars of a ``log_every`` step."""
        names = [t.name for t in self._spec.tasks]
        step_losses = losses.float().tolist()  # the interval's one copy to the host
        tb = {f"loss/{n}": float(v) for n, v in zip(names, step_losses)}
        tb.update({f"weight/{n}": w for n, w in zip(names, self.weighting.logged_weights())})
        tb["samples_per_second"] = self.samples / max(
            self.train_seconds + time.perf_counter() - t_epoch, 1e-9
        )
        if self.lr_schedule is not None:
            tb.update(self.lr_schedule.lrs())
        if self.pipeline.last_grad_norm is not None:
            tb["grad_norm/dense"] = float(self.pipeline.last_grad_norm)
        self._scalars.add(tb, self.step)
