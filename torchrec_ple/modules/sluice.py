"""Sluice networks (Ruder et al., AAAI 2019) for multi-task heads."""

from typing import List, Optional, Tuple

import torch
from torch import nn

from torchrec_ple.modules.base import MultiTaskHead
from torchrec_ple.modules.cross_stitch import near_identity
from torchrec_ple.modules.mlp import StackedLinear, check_dims, make_activation, make_dropout
from torchrec_ple.registry import HEADS


class _SluiceLayer(nn.Module):
    """One layer of every column, the alpha mix of all tasks' subspaces, and the projection
    of the mixed output to the last layer's width (``None`` for the last layer)."""

    def __init__(
        self,
        num_tasks: int,
        num_subspaces: int,
        in_features: int,
        out_features: int,
        last_dim: int,
        activation: str,
        dropout: float,
        shared_input: bool,
    ) -> None:
        super().__init__()
        self._num_tasks = num_tasks
        self._num_subspaces = num_subspaces
        self._out_features = out_features
        self._subspace_dim = out_features // num_subspaces
        self._linear = StackedLinear(
            num_tasks, in_features, out_features, shared_input=shared_input
        )
        self._activation = make_activation(activation)
        self._dropout = make_dropout(dropout)
        self.alpha = nn.Parameter(near_identity(num_tasks * num_subspaces))
        if out_features != last_dim:
            self._projection: Optional[StackedLinear] = StackedLinear(
                num_tasks, out_features, last_dim, bias=False
            )
        else:
            self._projection = None

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, D)`` (first layer) or ``(K, B, D)`` to the mixed ``(K, B, H)`` and its
        projection ``(K, B, H_last)``."""
        k, s, d = self._num_tasks, self._num_subspaces, self._subspace_dim
        h = self._dropout(self._activation(self._linear(h)))
        # (K, B, S * d) -> (K * S, B * d): row k * S + s is task k's subspace s.
        z = h.reshape(k, -1, s, d).permute(0, 2, 1, 3).reshape(k * s, -1)
        z = torch.mm(self.alpha, z)
        h = z.view(k, s, -1, d).permute(0, 2, 1, 3).reshape(k, -1, self._out_features)
        projection = self._projection
        if projection is not None:
            return h, projection(h)
        return h, h


@HEADS.register("sluice")
class Sluice(MultiTaskHead):
    """Sluice network: one column (MLP) per task, each layer's units split into
    ``num_subspaces`` subspaces, with learned static mixing across tasks and across layers.

    * alpha: after layer ``l``, an ``(K * S) x (K * S)`` matrix mixes all tasks' subspaces
      (row ``k * S + s`` is task ``k``'s subspace ``s``); it starts near the identity (0.9 on
      the diagonal, the remaining 0.1 of each row spread evenly).
    * beta: task ``k``'s output is ``sum_l beta[k, l] * P_{k,l}(h_{k,l})`` over the alpha-mixed
      outputs ``h_{k,l}`` of every layer, where ``P_{k,l}`` is a bias-free per-task linear
      projection to the last layer's width (the identity for layers already that wide). No
      softmax; beta starts at 0.9 on the last layer and 0.1 spread over the others.

    The paper's subspace orthogonality regulariser is not part of this module.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        expert_dims (List[int]): layer widths of each column; each divisible by
            ``num_subspaces``. Default: ``[64, 32]``.
        num_subspaces (int): subspaces per layer ``S``; at least 1. Default: 2.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every layer (before the alpha mix). Default: 0.0.

    Example::

        head = Sluice(16, num_tasks=2, expert_dims=[32, 8], num_subspaces=2)
        outputs = head(torch.randn(4, 16))  # two (4, 8)
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        expert_dims: Optional[List[int]] = None,
        num_subspaces: int = 2,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        dims = check_dims("expert_dims", [64, 32] if expert_dims is None else expert_dims)
        if num_subspaces < 1:
            raise ValueError(f"num_subspaces must be at least 1, got {num_subspaces}")
        uneven = [d for d in dims if d % num_subspaces != 0]
        if uneven:
            raise ValueError(
                f"every width in expert_dims {dims} must be divisible by num_subspaces="
                f"{num_subspaces} (each layer splits evenly into subspaces); {uneven} are not"
            )
        layers: List[nn.Module] = []
        width = in_features
        for i, out in enumerate(dims):
            layers.append(
                _SluiceLayer(
                    num_tasks, num_subspaces, width, out, dims[-1], activation, dropout, i == 0
                )
            )
            width = out
        self._layers = nn.ModuleList(layers)
        self.beta = nn.Parameter(near_identity(len(dims))[-1:].expand(num_tasks, -1).clone())
        self._output_dims = [dims[-1]] * num_tasks

    def alpha_parameters(self) -> List[nn.Parameter]:
        """The ``(K * S, K * S)`` subspace mixing matrices, one per layer."""
        return [layer.alpha for layer in self._layers]  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors of shape ``(B, expert_dims[-1])``.
        """
        h = x
        projected: List[torch.Tensor] = []
        for layer in self._layers:
            h, p = layer(h)
            projected.append(p)
        # (K, L) x (L, K, B, H) -> (K, B, H)
        mixed = torch.einsum("kl,lkbh->kbh", self.beta, torch.stack(projected, dim=0))
        outputs: List[torch.Tensor] = []
        for k in range(self._num_tasks):
            outputs.append(mixed[k])
        return outputs
