"""``uncertainty``: Kendall et al.'s learned task uncertainties, on top of the schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from torchrec_ple.registry import LOSS_WEIGHTINGS
from torchrec_ple.train.weightings.base import LossWeighting
from torchrec_ple.train.weightings.fixed import FixedWeighting

if TYPE_CHECKING:
    from torchrec_ple.spec.schema import Spec


@LOSS_WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(FixedWeighting):
    """``sum_k w_k(t) (c_k exp(-s_k) L_k + [k present] s_k / 2)`` with learned ``s_k``.

    ``s_k`` is task k's log-variance (``log_vars``, trained by the dense optimizer);
    ``c_k`` is 1 for binary tasks and 1/2 for regression; a task without a sample in the
    batch adds no ``s_k`` term (nothing would pull ``s_k`` back). ``w_k(t)`` is the
    ``fixed`` schedule.

    Args:
        initial (Sequence[float]): ``w_k0`` per task.
        decay (Sequence[float]): ``gamma_k`` per task.
        task_types (Sequence[str]): ``binary`` or ``regression`` per task.

    Example::

        weighting = UncertaintyWeighting([1.0, 1.0], [1.0, 1.0], ["binary", "regression"])
        loss = weighting(torch.tensor([0.7, 2.0]), torch.tensor([8.0, 0.0]))
    """

    def __init__(
        self, initial: Sequence[float], decay: Sequence[float], task_types: Sequence[str]
    ) -> None:
        super().__init__(initial, decay)
        self.register_buffer(
            "_scale",
            torch.tensor([1.0 if t == "binary" else 0.5 for t in task_types]),
            persistent=False,
        )
        self.log_vars = nn.Parameter(torch.zeros(len(task_types)))

    @classmethod
    def from_spec(cls, spec: Spec) -> LossWeighting:
        return cls(
            [t.weight.initial for t in spec.tasks],
            [t.weight.decay for t in spec.tasks],
            [t.type for t in spec.tasks],
        )

    def weigh(self, losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        present = (counts > 0).to(losses.dtype)
        return self._scale * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars * present
