"""Per-task towers that turn each task's representation into its prediction logits."""

from typing import List, Optional

import torch
from torch import nn

from torchrec_ple.modules.mlp import MLP, StackedMLP, check_dims


class _StackedTowers(nn.Module):
    """Towers of identical shape as one ``StackedMLP`` (one batched op per layer)."""

    def __init__(
        self, num: int, in_dim: int, dims: List[int], activation: str, dropout: float
    ) -> None:
        super().__init__()
        self._num = num
        self._mlps = StackedMLP(
            num, in_dim, dims, activation, dropout, activate_last=False, shared_input=False
        )

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        y = self._mlps(torch.stack(xs, dim=0))
        per_task = y.unbind(0)  # one stack in the backward, not a zero-filled copy per tower
        outputs: List[torch.Tensor] = []
        for k in range(self._num):
            outputs.append(per_task[k])
        return outputs


class _LoopedTowers(nn.Module):
    """Towers of different shapes, run one after another."""

    def __init__(
        self,
        in_dims: List[int],
        hidden_dims: List[int],
        out_dims: List[int],
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self._towers = nn.ModuleList(
            [
                MLP(d, hidden_dims + [o], activation, dropout, activate_last=False)
                for d, o in zip(in_dims, out_dims)
            ]
        )

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        outputs: List[torch.Tensor] = []
        for k, tower in enumerate(self._towers):
            outputs.append(tower(xs[k]))
        return outputs


class TaskTowers(nn.Module):
    """One MLP tower per task: hidden layers, then a plain ``Linear`` to the task's output
    width (logits; no activation on the output).

    When every tower has the same input and output width they run stacked, one batched op
    per layer; otherwise one after another.

    Args:
        in_dims (List[int]): input width of each task's tower (a head's ``output_dims``).
        hidden_dims (List[int]): hidden layer widths of every tower; may be empty.
        out_dims (Optional[List[int]]): output width of each tower; ``None`` gives 1 each.
            Default: None.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every hidden layer. Default: 0.0.

    Example::

        towers = TaskTowers([8, 8], hidden_dims=[16])
        ctr, cvr = towers([torch.randn(4, 8), torch.randn(4, 8)])  # each (4, 1)
    """

    def __init__(
        self,
        in_dims: List[int],
        hidden_dims: List[int],
        out_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_dims = check_dims("in_dims", in_dims)
        hidden_dims = check_dims("hidden_dims", hidden_dims, allow_empty=True)
        out_dims = [1] * len(in_dims) if out_dims is None else check_dims("out_dims", out_dims)
        if len(out_dims) != len(in_dims):
            raise ValueError(
                f"out_dims needs one width per tower: got {len(out_dims)} for {len(in_dims)} towers"
            )
        self._in_dims = in_dims
        self._out_dims = out_dims
        self._towers: nn.Module
        if len(set(in_dims)) == 1 and len(set(out_dims)) == 1:
            self._towers = _StackedTowers(
                len(in_dims), in_dims[0], hidden_dims + [out_dims[0]], activation, dropout
            )
        else:
            self._towers = _LoopedTowers(in_dims, hidden_dims, out_dims, activation, dropout)

    @property
    def num_tasks(self) -> int:
        """Number of towers."""
        return len(self._in_dims)

    @property
    def output_dims(self) -> List[int]:
        """Output width of each tower."""
        return list(self._out_dims)

    @property
    def stacked(self) -> bool:
        """Whether the towers run as one stacked op."""
        return isinstance(self._towers, _StackedTowers)

    __jit_unused_properties__ = ["num_tasks", "output_dims", "stacked"]

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            xs (List[torch.Tensor]): one ``(B, in_dims[k])`` tensor per task.

        Returns:
            List[torch.Tensor]: one ``(B, out_dims[k])`` tensor per task.
        """
        return self._towers(xs)
