"""TorchRec's sparse-dist training pipeline, with the loss checked before the backward.

The embedding tables train with fbgemm's fused optimizers: their update happens *inside*
the backward pass, so a step with a non-finite loss cannot be undone once the backward has
run. :class:`FiniteLossTrainPipeline` therefore looks at the loss between the forward and
the backward: a non-finite loss on any rank skips the backward and the optimizer step on
every rank (no parameter, optimizer state or fused embedding row changes), and the trainer
then stops or counts the skip (``train.on_nonfinite_loss``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist


class FiniteLossTrainPipeline(TrainPipelineSparseDist):
    """``TrainPipelineSparseDist`` that never applies a step whose loss is NaN or inf.

    After each :meth:`progress`, :attr:`last_step_applied` says whether the step updated
    the model. With more than one rank the verdict is all-reduced (one int per step), so
    every rank skips the same steps and the backward's collectives stay matched.
    """

    last_step_applied: bool = True

    def _backward(self, losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses.detach()).all().to(torch.int32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.last_step_applied = bool(finite.item())
        if self.last_step_applied:
            super()._backward(losses)

    def _optimizer_step(self) -> None:
        if self.last_step_applied:
            super()._optimizer_step()
