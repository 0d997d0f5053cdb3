"""The interface every multi-task head implements."""

from typing import Dict, List, Tuple

import torch
from torch import nn


class MultiTaskHead(nn.Module):
    """Base class of the config-free multi-task heads.

    A head maps one shared input representation to one representation per task; task towers
    (see ``TaskTowers``) turn those into predictions.

    Contract of a subclass:

    * ``forward(x)`` takes ``x`` of shape ``(B, in_features)`` and returns a Python list of
      ``num_tasks`` tensors, the k-th of shape ``(B, output_dims[k])``. Any batch size works,
      1 included. The list is a real list (not an unbound tensor), so a caller may iterate it
      under ``torch.fx.symbolic_trace``.
    * ``output_dims`` gives each task's representation width.
    * ``forward_with_gates(x)`` returns ``(outputs, gates)``. Gated heads (PLE, CGC, MMoE,
      ML-MMoE) fill ``gates`` with the softmax weights of every gate, keyed
      ``"level{j}/task{k}"`` and ``"level{j}/shared"`` (levels and tasks counted from 0), each
      of shape ``(B, n_experts_seen)``. Expert order within a task gate: the task's own
      experts, then the shared experts. Within a shared gate: task 0's experts, task 1's
      experts, ..., then the shared experts. Heads without gates return an empty dict.

    Args:
        in_features (int): width ``D`` of the input.
        num_tasks (int): number of tasks ``K``; at least 1.

    Example::

        head = PLE(16, num_tasks=2, expert_dims=[8])  # any subclass
        outputs, gates = head.forward_with_gates(torch.randn(4, 16))
        assert [y.shape[1] for y in outputs] == head.output_dims
    """

    __jit_unused_properties__ = ["output_dims", "num_tasks", "in_features"]

    def __init__(self, in_features: int, num_tasks: int) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be at least 1, got {in_features}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        self._in_features = in_features
        self._num_tasks = num_tasks
        self._output_dims: List[int] = []

    @property
    def in_features(self) -> int:
        """Width of the input."""
        return self._in_features

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return self._num_tasks

    @property
    def output_dims(self) -> List[int]:
        """Width of each task's output representation, one entry per task."""
        return list(self._output_dims)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): input of shape ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors of shape ``(B, output_dims[k])``.
        """
        raise NotImplementedError

    def forward_with_gates(
        self, x: torch.Tensor
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """Like ``forward``, plus the gate weights (an empty dict for heads without gates).

        Args:
            x (torch.Tensor): input of shape ``(B, in_features)``.

        Returns:
            Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]: the task outputs and the
            gates, each ``(B, n_experts_seen)``.
        """
        gates: Dict[str, torch.Tensor] = {}
        return self.forward(x), gates
