"""Masked multi-task loss over the union sample space, and loss-weight schedules."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_ple.data.batch import MultiTaskBatch
from torchrec_ple.models.multitask import MultiTaskModel


def masked_task_losses(
    outputs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, is_binary: torch.Tensor
) -> torch.Tensor:
    """Per-task masked mean ``L_k = sum_i phi_ik loss_ik / sum_i phi_ik``.

    A task with no sample in the batch (``sum phi = 0``) gets loss 0 and no gradient,
    rather than NaN.

    Args:
        outputs (torch.Tensor): (B, K) logits (binary tasks) or values (regression).
        labels (torch.Tensor): (B, K) targets.
        masks (torch.Tensor): (B, K) ``phi`` in {0, 1}.
        is_binary (torch.Tensor): (K,) bool: binary cross-entropy, else squared error.

    Returns:
        torch.Tensor: (K,) per-task losses.
    """
    bce = F.binary_cross_entropy_with_logits(outputs, labels, reduction="none")
    sq = (outputs - labels) ** 2
    per_sample = torch.where(is_binary.unsqueeze(0), bce, sq)
    return (per_sample * masks).sum(dim=0) / masks.sum(dim=0).clamp(min=1.0)


class ExponentialLossWeights:
    """The paper's dynamic task weights ``w_k(t) = w_k0 * gamma_k ** t``.

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
        """(K,) float32 weights at step or epoch ``t``."""
        return (self._initial * self._decay**t).float()


class MultiTaskTrainModule(nn.Module):
    """Wraps a :class:`MultiTaskModel` into what TorchRec's train pipelines call.

    ``forward(batch)`` returns ``(loss, (task_losses, outputs, labels, masks))`` where
    ``loss = sum_k w_k L_k``; the trainer sets the weights ``w`` before each step with
    :meth:`set_task_weights`.

    Args:
        model (MultiTaskModel): the model.
        task_types (List[str]): ``binary`` or ``regression`` per task.
    """

    def __init__(self, model: MultiTaskModel, task_types: List[str]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer(
            "_is_binary", torch.tensor([t == "binary" for t in task_types]), persistent=False
        )
        self.register_buffer("_task_weights", torch.ones(len(task_types)), persistent=False)

    def set_task_weights(self, weights: torch.Tensor) -> None:
        self._task_weights.copy_(weights)

    def forward(
        self, batch: MultiTaskBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        outputs = self.model(batch.dense, batch.sparse)
        losses = masked_task_losses(outputs, batch.labels, batch.masks, self._is_binary)
        loss = (losses * self._task_weights).sum()
        return loss, (losses.detach(), outputs.detach(), batch.labels, batch.masks)
