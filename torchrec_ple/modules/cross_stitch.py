"""Cross-stitch networks (Misra et al., CVPR 2016) for multi-task heads."""

from typing import List, Optional

import torch
from torch import nn

from torchrec_ple.modules.base import MultiTaskHead
from torchrec_ple.modules.mlp import (
    ParamSlice,
    StackedLinear,
    check_dims,
    make_activation,
    make_dropout,
)
from torchrec_ple.registry import HEADS


def near_identity(n: int, diagonal: float = 0.9) -> torch.Tensor:
    """An ``(n, n)`` mixing matrix with ``diagonal`` on the diagonal and the rest of each row,
    ``(1 - diagonal) / (n - 1)``, spread evenly off it (rows sum to 1); ``[[1.]]`` for n = 1.
    """
    if n == 1:
        return torch.ones(1, 1)
    off = (1.0 - diagonal) / (n - 1)
    return torch.full((n, n), off) + (diagonal - off) * torch.eye(n)


class _CrossStitchLayer(nn.Module):
    """One layer of every column, then the cross-stitch unit mixing the columns."""

    def __init__(
        self,
        num_tasks: int,
        in_features: int,
        out_features: int,
        activation: str,
        dropout: float,
        shared_input: bool,
    ) -> None:
        super().__init__()
        self._num_tasks = num_tasks
        self._out_features = out_features
        self._linear = StackedLinear(
            num_tasks, in_features, out_features, shared_input=shared_input
        )
        self._activation = make_activation(activation)
        self._dropout = make_dropout(dropout)
        self.alpha = nn.Parameter(near_identity(num_tasks))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` (first layer) or ``(K, B, D)`` to ``(K, B, H)``."""
        h = self._dropout(self._activation(self._linear(h)))
        k = self._num_tasks
        # h'_k = sum_l alpha[k, l] h_l for all tasks at once.
        return torch.mm(self.alpha, h.reshape(k, -1)).view(k, -1, self._out_features)


@HEADS.register("cross_stitch")
class CrossStitch(MultiTaskHead):
    """Cross-stitch network: one column (MLP) per task, and after every layer a learned
    ``K x K`` matrix ``alpha`` mixing the columns' hidden units: ``h'_k = sum_l alpha[k, l]
    h_l``.

    The columns run as one batched op per layer. Each ``alpha`` starts near the identity: 0.9
    on the diagonal and ``0.1 / (K - 1)`` elsewhere (1 for a single task). The mixing weights
    are static (input-independent), as in the paper.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        expert_dims (List[int]): layer widths of each column. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every layer (before the stitch). Default: 0.0.

    Example::

        head = CrossStitch(16, num_tasks=2, expert_dims=[32, 8])
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
        dims = check_dims("expert_dims", [64, 32] if expert_dims is None else expert_dims)
        layers: List[nn.Module] = []
        width = in_features
        for i, out in enumerate(dims):
            layers.append(_CrossStitchLayer(num_tasks, width, out, activation, dropout, i == 0))
            width = out
        self._layers = nn.ModuleList(layers)
        self._output_dims = [dims[-1]] * num_tasks

    def stitch_parameters(self) -> List[nn.Parameter]:
        """The ``(K, K)`` cross-stitch matrices, one per layer."""
        return [layer.alpha for layer in self._layers]  # type: ignore[misc]

    def column_parameter_slices(self, task: int) -> List[ParamSlice]:
        """Where task ``task``'s column lives (weight then bias of each layer)."""
        slices: List[ParamSlice] = []
        for layer in self._layers:
            slices.extend(layer._linear.parameter_slices(task))  # type: ignore[operator]
        return slices

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors of shape ``(B, expert_dims[-1])``.
        """
        h = x
        for layer in self._layers:
            h = layer(h)
        outputs: List[torch.Tensor] = []
        for k in range(self._num_tasks):
            outputs.append(h[k])
        return outputs
