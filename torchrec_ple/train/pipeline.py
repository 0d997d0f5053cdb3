"""TorchRec's sparse-dist training pipeline, with the loss checked before the backward.

The embedding tables train with fbgemm's fused optimizers: their update happens *inside*
the backward pass, so a step with a non-finite loss cannot be undone once the backward has
run. :class:`FiniteLossTrainPipeline` therefore looks at the loss between the forward and
the backward: a non-finite loss on any rank skips the backward and the optimizer step on
every rank (no parameter, optimizer state or fused embedding row changes), and the trainer
then stops or counts the skip (``train.on_nonfinite_loss``).

Between the backward and the optimizer step it also clips the dense parameters' gradient
norm (``train.clip_grad_norm``). The fused embedding tables cannot be clipped: their rows
were already updated inside the backward.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist


class FiniteLossTrainPipeline(TrainPipelineSparseDist):
    """``TrainPipelineSparseDist`` that never applies a step whose loss is NaN or inf.

    After each :meth:`progress`, :attr:`last_step_applied` says whether the step updated
    the model. With more than one rank the verdict is all-reduced (one int per step), so
    every rank skips the same steps and the backward's collectives stay matched.

    Args:
        *args: those of ``TrainPipelineSparseDist`` (model, optimizer, device, ...).
        clip_params (Sequence[torch.Tensor]): the dense parameters whose gradient norm is
            clipped. Default: none.
        clip_grad_norm (Optional[float]): the largest global L2 norm of their gradients;
            None does not clip. With more than one rank DDP has averaged the gradients
            when the backward returns, so every rank computes the same norm and clips
            alike. Default: None.
        **kwargs: those of ``TrainPipelineSparseDist``.
    """

    last_step_applied: bool = True

    def __init__(
        self,
        *args: Any,
        clip_params: Sequence[torch.Tensor] = (),
        clip_grad_norm: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._clip_params = [p for p in clip_params if p.requires_grad]
        self._clip_grad_norm = clip_grad_norm
        # device tensors, read once per epoch: no host sync per step
        self.last_grad_norm: Optional[torch.Tensor] = None
        self.clipped_steps: Optional[torch.Tensor] = None

    def _backward(self, losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses.detach()).all().to(torch.int32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.last_step_applied = bool(finite.item())
        if self.last_step_applied:
            super()._backward(losses)

    def _optimizer_step(self) -> None:
        if self.last_step_applied:
            if self._clip_grad_norm is not None and self._clip_params:
                norm = torch.nn.utils.clip_grad_norm_(self._clip_params, self._clip_grad_norm)
                self.last_grad_norm = norm.detach()
                over = (norm > self._clip_grad_norm).to(torch.int64)
                self.clipped_steps = (
                    over if self.clipped_steps is None else self.clipped_steps + over
                )
            super()._optimizer_step()
