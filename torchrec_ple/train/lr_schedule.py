"""Learning-rate schedule of a run (``train.lr_schedule``): warmup, then cosine or step decay.

The factor of step ``t`` depends on ``t`` alone, and is written into the optimizers'
param groups before each step, so a resumed run (whose optimizer state does not hold the
learning rates) continues the schedule at its step.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, MutableMapping, Sequence, Tuple

from torchrec_ple.spec.schema import LrScheduleSpec

__all__ = ["LrSchedule"]


class LrSchedule:
    """A learning-rate factor per step, applied to param groups that keep their base lr.

    Args:
        spec (LrScheduleSpec): ``train.lr_schedule``.
        total_steps (int): steps of the whole run (the cosine's end).
        groups (Sequence[MutableMapping[str, Any]]): the optimizer param groups to schedule;
            their ``lr`` now is the base the factor multiplies.

    Example::

        sched = LrSchedule(LrScheduleSpec(warmup_steps=10, decay="cosine"), 100, groups)
        sched.apply(step)  # before the step's forward: sets every group's lr
    """

    def __init__(
        self,
        spec: LrScheduleSpec,
        total_steps: int,
        groups: Sequence[MutableMapping[str, Any]],
    ) -> None:
        self._spec = spec
        self._total = max(int(total_steps), 1)
        self._groups: List[Tuple[MutableMapping[str, Any], float]] = [
            (g, float(g["lr"])) for g in groups
        ]

    def factor(self, step: int) -> float:
        """The factor of the step taken after ``step`` steps."""
        s = self._spec
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        t = step - s.warmup_steps
        if s.decay == "cosine":
            span = max(self._total - s.warmup_steps - 1, 1)
            progress = min(t / span, 1.0)
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if s.decay == "step":
            assert s.step_size is not None
            return float(s.gamma ** (t // s.step_size))
        return 1.0

    def apply(self, step: int) -> float:
        """Set every group's lr for the step taken after ``step`` steps; returns the factor."""
        f = self.factor(step)
        for group, base in self._groups:
            group["lr"] = base * f
        return f

    def lrs(self) -> Dict[str, float]:
        """The groups' current lr, for logs: ``{"lr/group0": ...}``."""
        return {f"lr/group{i}": float(g["lr"]) for i, (g, _) in enumerate(self._groups)}
