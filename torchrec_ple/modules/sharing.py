"""Baselines without gates: separate bottoms, a hard-shared bottom, and the two hybrids of the
PLE paper (asymmetric and customized sharing)."""

from typing import List, Optional

import torch

from torchrec_ple.modules.base import MultiTaskHead
from torchrec_ple.modules.mlp import MLP, ParamSlice, StackedMLP, check_dims
from torchrec_ple.registry import HEADS


def _dims(expert_dims: Optional[List[int]]) -> List[int]:
    return check_dims("expert_dims", [64, 32] if expert_dims is None else expert_dims)


@HEADS.register("single_task")
class SingleTask(MultiTaskHead):
    """One independent bottom MLP per task; no parameter is shared between tasks.

    The reference point for the MTL gain: the same structure trained with no sharing. The
    bottoms are one ``StackedMLP`` (one batched op per layer); task ``k``'s parameters are
    ``task_parameter_slices(k)``.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        expert_dims (List[int]): layer widths of each bottom. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every layer. Default: 0.0.

    Example::

        head = SingleTask(16, num_tasks=2, expert_dims=[8])
        outputs = head(torch.randn(4, 16))  # two (4, 8)
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        expert_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        dims = _dims(expert_dims)
        self._bottoms = StackedMLP(num_tasks, in_features, dims, activation, dropout)
        self._output_dims = [dims[-1]] * num_tasks

    def task_parameter_slices(self, task: int) -> List[ParamSlice]:
        """Where task ``task``'s bottom lives (see ``StackedMLP.mlp_parameter_slices``)."""
        return self._bottoms.mlp_parameter_slices(task)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors of shape ``(B, expert_dims[-1])``.
        """
        h = self._bottoms(x)
        outputs: List[torch.Tensor] = []
        for k in range(self._num_tasks):
            outputs.append(h[k])
        return outputs


@HEADS.register("shared_bottom")
class SharedBottom(MultiTaskHead):
    """Hard parameter sharing: one bottom MLP whose output every task receives.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        expert_dims (List[int]): layer widths of the bottom. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every layer. Default: 0.0.

    Example::

        head = SharedBottom(16, num_tasks=2, expert_dims=[8])
        outputs = head(torch.randn(4, 16))  # the same (4, 8) tensor twice
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        expert_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        dims = _dims(expert_dims)
        self._bottom = MLP(in_features, dims, activation, dropout)
        self._output_dims = [dims[-1]] * num_tasks

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: the bottom's ``(B, expert_dims[-1])`` output, once per task.
        """
        h = self._bottom(x)
        outputs: List[torch.Tensor] = []
        for _ in range(self._num_tasks):
            outputs.append(h)
        return outputs


@HEADS.register("asymmetric")
class AsymmetricSharing(MultiTaskHead):
    """Asymmetric sharing: every task has its own bottom, and the source task's bottom output
    is also fed to every other task.

    Task ``source_task`` gets ``bottom_s(x)``; task ``k != s`` gets
    ``cat([bottom_k(x), bottom_s(x)], dim=1)``. The source features are not detached, so the
    other tasks' losses also train the source bottom; nothing flows the other way.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        expert_dims (List[int]): layer widths of each bottom. Default: ``[64, 32]``.
        source_task (int): the task whose bottom feeds the others. Default: 0.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every layer. Default: 0.0.

    Example::

        head = AsymmetricSharing(16, num_tasks=2, expert_dims=[8], source_task=0)
        outputs = head(torch.randn(4, 16))  # (4, 8) and (4, 16)
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        expert_dims: Optional[List[int]] = None,
        source_task: int = 0,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        if not 0 <= source_task < num_tasks:
            raise ValueError(
                f"source_task must be a task index in [0, {num_tasks - 1}], got {source_task}"
            )
        dims = _dims(expert_dims)
        self._source_task = source_task
        self._bottoms = StackedMLP(num_tasks, in_features, dims, activation, dropout)
        self._output_dims = [
            dims[-1] if k == source_task else 2 * dims[-1] for k in range(num_tasks)
        ]

    @property
    def source_task(self) -> int:
        """The task whose bottom feeds the others."""
        return self._source_task

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``(B, H)`` for the source task, ``(B, 2 * H)`` for the others,
            ``H = expert_dims[-1]``.
        """
        h = self._bottoms(x)
        source = h[self._source_task]
        outputs: List[torch.Tensor] = []
        for k in range(self._num_tasks):
            if k == self._source_task:
                outputs.append(source)
            else:
                outputs.append(torch.cat([h[k], source], dim=1))
        return outputs


@HEADS.register("customized")
class CustomizedSharing(MultiTaskHead):
    """Customized sharing: a shared bottom plus one specific bottom per task, concatenated.

    Task ``k`` gets ``cat([shared(x), specific_k(x)], dim=1)``.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        expert_dims (List[int]): layer widths of each task-specific bottom.
            Default: ``[64, 32]``.
        shared_dims (Optional[List[int]]): layer widths of the shared bottom; ``None`` uses
            ``expert_dims``. Default: None.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every layer. Default: 0.0.

    Example::

        head = CustomizedSharing(16, num_tasks=2, expert_dims=[8], shared_dims=[4])
        outputs = head(torch.randn(4, 16))  # two (4, 12)
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        expert_dims: Optional[List[int]] = None,
        shared_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        dims = _dims(expert_dims)
        shared = dims if shared_dims is None else check_dims("shared_dims", shared_dims)
        self._shared = MLP(in_features, shared, activation, dropout)
        self._specific = StackedMLP(num_tasks, in_features, dims, activation, dropout)
        self._output_dims = [shared[-1] + dims[-1]] * num_tasks

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors ``(B, shared_dims[-1] +
            expert_dims[-1])``, shared features first.
        """
        shared = self._shared(x)
        specific = self._specific(x)
        outputs: List[torch.Tensor] = []
        for k in range(self._num_tasks):
            outputs.append(torch.cat([shared, specific[k]], dim=1))
        return outputs
