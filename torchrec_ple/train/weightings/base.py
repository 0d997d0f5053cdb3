"""The loss-weighting protocol: how the per-task losses of a step become its objective."""

from __future__ import annotations

from typing import TYPE_CHECKING, List

import torch
from torch import nn

if TYPE_CHECKING:
    from torchrec_ple.spec.schema import Spec


class LossWeighting(nn.Module):
    """Combines the per-task losses ``L_k`` of a step into the loss that is back-propagated.

    A weighting is registered by name in :data:`torchrec_ple.registry.LOSS_WEIGHTINGS`;
    ``train.loss_weighting`` names it. Before every training step the trainer calls
    :meth:`set_position` with the schedule position ``t`` (the step, or the epoch under
    ``train.weight_schedule_unit: epoch``); the train module then calls the weighting with
    that step's losses. Learned weightings hold ``nn.Parameter`` s: the dense optimizer
    trains them and checkpoints save them (``loss_weighting.<name>``).

    Args:
        num_tasks (int): ``K``, the number of tasks.

    Example::

        @LOSS_WEIGHTINGS.register("equal")
        class Equal(LossWeighting):
            def forward(self, losses, counts):
                return losses.mean()

            def weights(self):
                return torch.full((self.num_tasks,), 1.0 / self.num_tasks)
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks

    @classmethod
    def from_spec(cls, spec: Spec) -> LossWeighting:
        """The weighting for a spec's tasks (``tasks[].weight``, ``tasks[].type``).

        Args:
            spec (Spec): the validated spec.
        """
        return cls(len(spec.tasks))

    def set_position(self, t: int) -> None:
        """Move the schedule to position ``t`` (a step or an epoch); a no-op by default.

        Args:
            t (int): the step (or epoch) of the next training step.
        """

    def forward(self, losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The objective of one step.

        Args:
            losses (torch.Tensor): (K,) per-task masked mean losses (this rank's share).
            counts (torch.Tensor): (K,) samples of each task in the (global) batch; a task
                with 0 had no sample.

        Returns:
            torch.Tensor: () the loss to back-propagate.
        """
        raise NotImplementedError

    def weights(self) -> torch.Tensor:
        """(K,) float32 task weights at the current position, for the logs (TensorBoard
        ``weight/<task>``, ``metrics.json`` ``task_weights``)."""
        raise NotImplementedError

    def logged_weights(self) -> List[float]:
        """:meth:`weights` as Python floats."""
        return [float(w) for w in self.weights().tolist()]
