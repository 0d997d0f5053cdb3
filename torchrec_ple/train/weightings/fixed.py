"""``fixed``: the paper's scheduled task weights ``w_k(t) = w_k0 * gamma_k ** t``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from torchrec_ple.registry import LOSS_WEIGHTINGS
from torchrec_ple.train.weightings.base import LossWeighting

if TYPE_CHECKING:
    from torchrec_ple.spec.schema import Spec


class ExponentialLossWeights:
    """The schedule ``w_k(t) = w_k0 * gamma_k ** t`` (float64, rounded to float32 once).

    Args:
        initial (Sequence[float]): ``w_k0`` per task.
        decay (Sequence[float]): ``gamma_k`` per task.

    Example::

        schedule = ExponentialLossWeights([1.0, 1.0], [1.0, 0.999])
        schedule(10)  # tensor([1.0000, 0.9900])
    """

    def __init__(self, initial: Sequence[float], decay: Sequence[float]) -> None:
        self._initial = torch.tensor(list(initial), dtype=torch.float64)
        self._decay = torch.tensor(list(decay), dtype=torch.float64)

    def __call__(self, t: int) -> torch.Tensor:
        """(K,) float32 weights at step or epoch ``t`` (on the schedule's device)."""
        return (self._initial * self._decay**t).float()

    def to(self, device: torch.device) -> ExponentialLossWeights:
        """The same schedule computed on ``device``: no host-to-device copy per step."""
        out = ExponentialLossWeights.__new__(ExponentialLossWeights)
        out._initial, out._decay = self._initial.to(device), self._decay.to(device)
        return out


@LOSS_WEIGHTINGS.register("fixed")
class FixedWeighting(LossWeighting):
    """``sum_k w_k(t) L_k`` with the scheduled weights ``w_k(t) = w_k0 * gamma_k ** t``.

    The weights of a step are computed on the module's device (no host-to-device copy per
    step); the logged ones on the CPU.

    Args:
        initial (Sequence[float]): ``w_k0`` per task (``tasks[].weight.initial``).
        decay (Sequence[float]): ``gamma_k`` per task (``tasks[].weight.decay``).

    Example::

        weighting = FixedWeighting([1.0, 0.2], [1.0, 0.999])
        weighting.set_position(10)
        loss = weighting(torch.tensor([0.7, 2.0]), torch.tensor([8.0, 8.0]))
    """

    def __init__(self, initial: Sequence[float], decay: Sequence[float]) -> None:
        super().__init__(len(initial))
        self._schedule = ExponentialLossWeights(initial, decay)  # CPU: the logged weights
        self._t = 0
        self.register_buffer(
            "_initial", torch.tensor(list(initial), dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "_decay", torch.tensor(list(decay), dtype=torch.float64), persistent=False
        )
        self.register_buffer("_weights", torch.ones(len(initial)), persistent=False)
        self.set_position(0)

    @classmethod
    def from_spec(cls, spec: Spec) -> LossWeighting:
        return cls([t.weight.initial for t in spec.tasks], [t.weight.decay for t in spec.tasks])

    def set_position(self, t: int) -> None:
        self._t = t
        self._weights.copy_((self._initial * self._decay**t).float())

    def forward(self, losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return (self.weigh(losses, counts) * self._weights).sum()

    def weigh(self, losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(K,) what the scheduled weights multiply: the losses themselves here."""
        return losses

    def weights(self) -> torch.Tensor:
        return self._schedule(self._t)
