"""Masked multi-task loss over the union sample space, and loss-weight schedules."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

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


def esmm_ctcvr_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor,
    ctr_label: torch.Tensor,
    cvr_label: torch.Tensor,
    ctr_mask: torch.Tensor,
) -> torch.Tensor:
    """ESMM's entire-space loss: BCE of ``pCTCVR = pCTR * pCVR`` against ``click * buy``.

    Args:
        ctr_logit (torch.Tensor): (B,) CTR logits.
        cvr_logit (torch.Tensor): (B,) CVR logits.
        ctr_label (torch.Tensor): (B,) clicks.
        cvr_label (torch.Tensor): (B,) conversions, 0 outside the CVR sample space.
        ctr_mask (torch.Tensor): (B,) the CTR task's sample space (the "entire space").

    Returns:
        torch.Tensor: () the masked mean loss.
    """
    # log(pCTR * pCVR) computed in log space for stability: log sigmoid(a) + log sigmoid(b).
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
    y = ctr_label * cvr_label
    per_sample = -(y * log_p + (1 - y) * log_not_p)
    return (per_sample * ctr_mask).sum() / ctr_mask.sum().clamp(min=1.0)


class MultiTaskTrainModule(nn.Module):
    """Wraps a :class:`MultiTaskModel` into what TorchRec's train pipelines call.

    ``forward(batch)`` returns ``(loss, (task_losses, outputs, labels, masks))`` where
    ``loss = sum_k w_k L_k`` (or, with uncertainty weighting, ``sum_k w_k (c_k exp(-s_k)
    L_k + s_k / 2)`` with learned ``s_k``); the trainer sets ``w`` before each step with
    :meth:`set_task_weights`.

    Args:
        model (MultiTaskModel): the model.
        task_types (List[str]): ``binary`` or ``regression`` per task.
        esmm_parents (Optional[List[int]]): per task, the index of the CTR task it is
            trained through (ESMM), or -1. Default: none.
        uncertainty (bool): learn Kendall et al.'s per-task log-variances. Default: False.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        task_types: List[str],
        esmm_parents: Optional[List[int]] = None,
        uncertainty: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        k = len(task_types)
        self._esmm: List[Tuple[int, int]] = [
            (i, p) for i, p in enumerate(esmm_parents or [-1] * k) if p >= 0
        ]
        self.register_buffer(
            "_is_binary", torch.tensor([t == "binary" for t in task_types]), persistent=False
        )
        self.register_buffer("_task_weights", torch.ones(k), persistent=False)
        onehot = torch.zeros(len(self._esmm), k)
        for i, (task, _) in enumerate(self._esmm):
            onehot[i, task] = 1.0
        self.register_buffer("_esmm_onehot", onehot, persistent=False)
        self.register_buffer(
            "_scale",
            torch.tensor([1.0 if t == "binary" else 0.5 for t in task_types]),
            persistent=False,
        )
        self.log_vars: Optional[nn.Parameter] = (
            nn.Parameter(torch.zeros(k)) if uncertainty else None
        )

    def set_task_weights(self, weights: torch.Tensor) -> None:
        self._task_weights.copy_(weights)

    def forward(
        self, batch: MultiTaskBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        outputs = self.model(batch.dense, batch.sparse)
        losses = masked_task_losses(outputs, batch.labels, batch.masks, self._is_binary)
        for i, (k, p) in enumerate(self._esmm):
            ctcvr = esmm_ctcvr_loss(
                outputs[:, p],
                outputs[:, k],
                batch.labels[:, p],
                batch.labels[:, k],
                batch.masks[:, p],
            )
            # Replace entry k without unbinding (keeps the module traceable by torch.fx).
            losses = losses + self._esmm_onehot[i] * (ctcvr - losses[k])
        if self.log_vars is not None:
            weighted = self._scale * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars
        else:
            weighted = losses
        loss = (weighted * self._task_weights).sum()
        return loss, (losses.detach(), outputs.detach(), batch.labels, batch.masks)
